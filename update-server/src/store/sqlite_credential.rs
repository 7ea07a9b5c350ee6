//! [`CredentialStore`] on SQLite: the table `machine_credentials` (migration 0008). A
//! first-use binding is `INSERT … ON CONFLICT DO NOTHING` followed by a read in the same
//! `BEGIN IMMEDIATE` transaction, so concurrent first requests bind exactly one key.

use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, add_activity, db, get};
use crate::model::NewActivity;
use crate::store::credential::{CredentialSource, CredentialStore, MachineCredential};
use crate::store::{StoreError, StoreFuture};

const TABLE: &str = "machine_credentials";

fn credential_of(row: &SqliteRow) -> Result<MachineCredential, StoreError> {
    let source: String = get(row, TABLE, "source")?;
    Ok(MachineCredential {
        machine_id: get(row, TABLE, "machine_id")?,
        public_key: get(row, TABLE, "public_key")?,
        source: CredentialSource::parse(&source).ok_or_else(|| StoreError::Corrupt {
            table: TABLE,
            column: "source",
            detail: format!("unknown source {source:?}"),
        })?,
        created_at: get(row, TABLE, "created_at")?,
    })
}

const SELECT: &str = "SELECT machine_id, public_key, source, created_at FROM machine_credentials WHERE machine_id = ?";

impl CredentialStore for SqliteStore {
    fn machine_credential<'a>(
        &'a self,
        machine_id: &'a str,
    ) -> StoreFuture<'a, Option<MachineCredential>> {
        Box::pin(async move {
            let row = sqlx::query(SELECT)
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
            let done = sqlx::query(
                "INSERT INTO machine_credentials (machine_id, public_key, source, created_at) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (machine_id) DO NOTHING",
            )
            .bind(&cred.machine_id)
            .bind(&cred.public_key)
            .bind(cred.source.as_str())
            .bind(cred.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db("bind machine credential"))?;
            if done.rows_affected() > 0 {
                add_activity(&mut tx, act, cred.created_at).await?;
            }
            let row = sqlx::query(SELECT)
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
            sqlx::query(
                "INSERT INTO machine_credentials (machine_id, public_key, source, created_at) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (machine_id) DO UPDATE SET \
                 public_key = excluded.public_key, source = excluded.source, \
                 created_at = excluded.created_at",
            )
            .bind(&cred.machine_id)
            .bind(&cred.public_key)
            .bind(cred.source.as_str())
            .bind(cred.created_at)
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
            let done = sqlx::query("DELETE FROM machine_credentials WHERE machine_id = ?")
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
