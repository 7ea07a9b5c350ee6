//! Writes a [`super::PgTx`] holds back and sends as one statement: the last writes of a check
//! (the grant, the instance's status, its events and history) depend on nothing read after them,
//! so they go to PostgreSQL in one round trip just before the commit, while the group's lock is
//! held, instead of one each. Each write becomes a data-modifying `WITH` part of one statement;
//! the parts touch different rows, so seeing one snapshot changes nothing. Any other statement
//! of the transaction sends the held writes first, so the order of effects is kept.

use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Encode, PgConnection, Postgres, Type};

use super::super::StoreError;
use super::super::sqlx_shared::{PortableQuery, db};

/// Held writes: SQL parts with their parameters renumbered into one list.
#[derive(Default)]
pub(crate) struct Deferred {
    parts: Vec<String>,
    args: PgArguments,
    params: usize,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("parts", &self.parts)
            .field("params", &self.params)
            .finish()
    }
}

impl Deferred {
    /// Holds `sql` back (its parameters `$1`… numbered as if alone); bind its values, in order,
    /// on the returned part.
    pub(crate) fn push(&mut self, sql: &str) -> DeferredPart<'_> {
        let offset = self.params;
        let mut out = String::with_capacity(sql.len() + 8);
        let mut highest = 0;
        let mut rest = sql;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let digits = rest[i + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - i - 1, |n| n);
            match rest[i + 1..i + 1 + digits].parse::<usize>() {
                Ok(n) => {
                    highest = highest.max(n);
                    out.push_str(&format!("${}", n + offset));
                }
                Err(_) => out.push('$'),
            }
            rest = &rest[i + 1 + digits..];
        }
        out.push_str(rest);
        self.parts.push(out);
        self.params += highest;
        DeferredPart {
            deferred: self,
            expected: offset + highest,
            error: None,
        }
    }

    /// Whether writes are held.
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Sends the held writes as one statement (nothing when none are held).
    pub(crate) async fn send(&mut self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.parts.is_empty() {
            return Ok(());
        }
        let Deferred { parts, args, .. } = std::mem::take(self);
        let sql = if parts.len() == 1 {
            parts.concat()
        } else {
            let with: Vec<String> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| format!("w{i} AS ({p})"))
                .collect();
            format!("WITH {} SELECT 1", with.join(", "))
        };
        sqlx::query_with(&sql, args)
            .execute(conn)
            .await
            .map_err(db("write the check's held rows"))?;
        Ok(())
    }
}

/// One held write being bound; binding too few or too many values is an internal error, found
/// when the part is finished ([`DeferredPart::done`]).
pub(crate) struct DeferredPart<'d> {
    deferred: &'d mut Deferred,
    expected: usize,
    error: Option<BoxDynError>,
}

impl DeferredPart<'_> {
    /// Binds the next parameter.
    pub(crate) fn bind<'t, T: Encode<'t, Postgres> + Type<Postgres> + 't>(mut self, v: T) -> Self {
        if self.error.is_none()
            && let Err(e) = self.deferred.args.add(v)
        {
            self.error = Some(e);
        }
        self
    }

    /// Checks the part's values.
    pub(crate) fn done(self) -> Result<(), StoreError> {
        if let Some(e) = self.error {
            return Err(StoreError::Internal(format!("binding a held write: {e}")));
        }
        let bound = self.deferred.args.len();
        if bound != self.expected {
            return Err(StoreError::Internal(format!(
                "a held write has {bound} values for {} parameters",
                self.expected
            )));
        }
        Ok(())
    }
}

impl<'q> PortableQuery<'q> for DeferredPart<'_> {
    fn bind_text(self, v: &'q str) -> Self {
        self.bind(v)
    }

    fn bind_opt_text(self, v: Option<&'q str>) -> Self {
        self.bind(v)
    }

    fn bind_int(self, v: i64) -> Self {
        self.bind(v)
    }

    fn bind_opt_int(self, v: Option<i64>) -> Self {
        self.bind(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_after_the_parts_before() {
        let mut d = Deferred::default();
        d.push("INSERT INTO a VALUES ($1, $2, $2)")
            .bind(1_i64)
            .bind("x")
            .done()
            .unwrap();
        d.push("UPDATE b SET c = $1 WHERE d = $10")
            .bind(2_i64)
            .done()
            .unwrap_err();
        assert_eq!(
            d.parts,
            [
                "INSERT INTO a VALUES ($1, $2, $2)",
                "UPDATE b SET c = $3 WHERE d = $12"
            ]
        );
        let mut d = Deferred::default();
        d.push("SELECT '$' || $1").bind("y").done().unwrap();
        assert_eq!(d.parts, ["SELECT '$' || $1"]);
    }
}
