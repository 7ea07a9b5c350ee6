//! [`CredentialStore`] on SQLite: the table `machine_credentials` (migration 0008). A
//! first-use binding is `INSERT … ON CONFLICT DO NOTHING` followed by a read in the same
//! `BEGIN IMMEDIATE` transaction, so concurrent first requests bind exactly one key.

use super::{SqliteStore, add_activity, db};
use crate::model::NewActivity;
use crate::store::StoreFuture;
use crate::store::credential::{CredentialStore, MachineCredential};
use crate::store::sqlx_rows::credential_of;
use crate::store::sqlx_shared as shared;

impl CredentialStore for SqliteStore {
    fn machine_credential<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> StoreFuture<'a, Option<MachineCredential>> {
        Box::pin(async move {
            let row = sqlx::query(shared::SELECT_CREDENTIAL)
                .bind(machine_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read machine credential"))?;
            row.as_ref().map(credential_of).transpose()
        })
    }

    fn bind_first_use<'a>(
        &'a self,
        cred: &'a MachineCredential,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, MachineCredential> {
        Box::pin(async move {
            let mut tx = self
                .begin_immediate("begin machine credential binding")
                .await?;
            let done =
                shared::bind_credential(sqlx::query(shared::INSERT_CREDENTIAL_UNLESS_BOUND), cred)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("bind machine credential"))?;
            if done.rows_affected() > 0 {
                add_activity(&mut tx, act, cred.created_at).await?;
            }
            let row = sqlx::query(shared::SELECT_CREDENTIAL)
                .bind(&cred.machine_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("read machine credential"))?;
            let bound = credential_of(&row)?;
            tx.commit()
                .await
                .map_err(db("commit machine credential binding"))?;
            Ok(bound)
        })
    }

    fn enroll_credential<'a>(
        &'a self,
        cred: &'a MachineCredential,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self
                .begin_immediate("begin machine credential enrollment")
                .await?;
            shared::bind_credential(sqlx::query(shared::UPSERT_CREDENTIAL), cred)
                .execute(&mut *tx)
                .await
                .map_err(db("enroll machine credential"))?;
            add_activity(&mut tx, act, cred.created_at).await?;
            tx.commit()
                .await
                .map_err(db("commit machine credential enrollment"))
        })
    }

    fn forget_credential<'a>(
        &'a self,
        machine_id: &'a str,
        act: &'a NewActivity,
        at: i64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut tx = self
                .begin_immediate("begin forgetting machine credential")
                .await?;
            let done = sqlx::query(shared::DELETE_CREDENTIAL)
                .bind(machine_id)
                .execute(&mut *tx)
                .await
                .map_err(db("delete machine credential"))?;
            let removed = done.rows_affected() > 0;
            if removed {
                add_activity(&mut tx, act, at).await?;
            }
            tx.commit()
                .await
                .map_err(db("commit forgetting machine credential"))?;
            Ok(removed)
        })
    }
}
