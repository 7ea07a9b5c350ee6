//! [`CredentialStore`] on PostgreSQL: the table `machine_credentials`. A first-use binding is
//! `INSERT … ON CONFLICT DO NOTHING` followed by a read in the same transaction: an insert that
//! meets another one's uncommitted row waits for it, so concurrent first requests (from any
//! replica) bind exactly one key, and the read, a statement of its own, sees the winner's.

use super::{PgStore, add_activity};
use crate::model::NewActivity;
use crate::store::StoreFuture;
use crate::store::credential::{CredentialStore, MachineCredential};
use crate::store::sqlx_rows::credential_of;
use crate::store::sqlx_shared::{self as shared, db};

impl CredentialStore for PgStore {
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
                .pool
                .begin()
                .await
                .map_err(db("begin machine credential binding"))?;
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
                .pool
                .begin()
                .await
                .map_err(db("begin machine credential enrollment"))?;
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
                .pool
                .begin()
                .await
                .map_err(db("begin forgetting machine credential"))?;
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
