//! [`FleetLockStore`] on SQLite: each lock or unlock is one `BEGIN IMMEDIATE` transaction, which
//! takes the database write lock before reading the holder count, so concurrent requests (from
//! this process or another server sharing the file) are serialised and never over-grant.

use sqlx::{Sqlite, Transaction};

use super::{SqliteStore, add_activity, db};
use crate::model::NewActivity;
use crate::store::fleetlock::{AcquireOutcome, Acquired, FleetLockStore, LockGroup, Released};
use crate::store::sqlx_rows::{holder_count_of, lock_groups_of, slots_of};
use crate::store::sqlx_shared as shared;
use crate::store::{StoreError, StoreFuture};

/// Groups with holders whose slot count was never configured (those a client brought).
async fn unconfigured_groups_held(tx: &mut Transaction<'_, Sqlite>) -> Result<i64, StoreError> {
    sqlx::query_scalar(shared::COUNT_UNCONFIGURED_LOCK_GROUPS)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("count fleetlock groups"))
}

async fn holders_in(tx: &mut Transaction<'_, Sqlite>, group: &str) -> Result<u32, StoreError> {
    let n: i64 = sqlx::query_scalar(shared::COUNT_LOCK_HOLDERS)
        .bind(group)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("count fleetlock holders"))?;
    holder_count_of(n)
}

impl FleetLockStore for SqliteStore {
    fn fleetlock_acquire<'a>(
        &'a self,
        group: &'a str,
        id: &'a str,
        default_slots: u32,
        max_groups: u32,
        at: i64,
    ) -> StoreFuture<'a, Acquired> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("begin fleetlock acquire").await?;
            let slots: Option<i64> = sqlx::query_scalar(shared::SELECT_LOCK_SLOTS)
                .bind(group)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read fleetlock slots"))?;
            let configured = slots.is_some();
            let slots = match slots {
                Some(s) => slots_of(s)?,
                None => default_slots,
            };
            let held: Option<i64> = sqlx::query_scalar(shared::SELECT_LOCK_HOLDER)
                .bind(group)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read fleetlock holder"))?;
            let holders = holders_in(&mut tx, group).await?;
            let outcome = if held.is_some() {
                AcquireOutcome::AlreadyHeld
            } else if !configured
                && holders == 0
                && unconfigured_groups_held(&mut tx).await? >= i64::from(max_groups)
            {
                AcquireOutcome::TooManyGroups
            } else if holders >= slots {
                AcquireOutcome::Full
            } else {
                sqlx::query(shared::INSERT_LOCK_HOLDER)
                    .bind(group)
                    .bind(id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("insert fleetlock holder"))?;
                AcquireOutcome::Granted
            };
            tx.commit().await.map_err(db("commit fleetlock acquire"))?;
            let holders = if outcome == AcquireOutcome::Granted {
                holders.saturating_add(1)
            } else {
                holders
            };
            Ok(Acquired {
                outcome,
                holders,
                slots,
            })
        })
    }

    fn fleetlock_release<'a>(
        &'a self,
        group: &'a str,
        id: &'a str,
        act: Option<&'a NewActivity>,
        at: i64,
    ) -> StoreFuture<'a, Released> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("begin fleetlock release").await?;
            let done = sqlx::query(shared::DELETE_LOCK_HOLDER)
                .bind(group)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db("delete fleetlock holder"))?;
            let was_held = done.rows_affected() > 0;
            if was_held && let Some(a) = act {
                add_activity(&mut tx, a, at).await?;
            }
            let holders = holders_in(&mut tx, group).await?;
            tx.commit().await.map_err(db("commit fleetlock release"))?;
            Ok(Released { was_held, holders })
        })
    }

    fn fleetlock_groups(&self, default_slots: u32) -> StoreFuture<'_, Vec<LockGroup>> {
        Box::pin(async move {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(db("begin fleetlock list"))?;
            let groups = sqlx::query(shared::SELECT_LOCK_GROUPS)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("list fleetlock groups"))?;
            let holders = sqlx::query(
                "SELECT group_name, holder_id, since FROM fleetlock_holders \
                 ORDER BY since, holder_id",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(db("list fleetlock holders"))?;
            tx.commit().await.map_err(db("end fleetlock list"))?;
            lock_groups_of(&groups, &holders, default_slots)
        })
    }

    fn fleetlock_set_slots<'a>(
        &'a self,
        group: &'a str,
        slots: u32,
        at: i64,
        act: &'a NewActivity,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.begin_immediate("begin fleetlock set slots").await?;
            sqlx::query(shared::UPSERT_LOCK_SLOTS)
                .bind(group)
                .bind(i64::from(slots))
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(db("set fleetlock slots"))?;
            add_activity(&mut tx, act, at).await?;
            tx.commit()
                .await
                .map_err(db("commit fleetlock set slots"))?;
            Ok(())
        })
    }
}
