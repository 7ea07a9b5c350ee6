//! `update-server instance enroll | credential | forget-credential`: the machine credential
//! bound to a machine id, through the admin API (`/api/v1/instances/{machine}/credential`).

use serde_json::{Value, json};

use super::table::{s, ts};
use super::{ApiClient, Conn, enc, output};

fn describe(v: &Value) -> String {
    format!(
        "{} is bound to key {} ({} at {})",
        s(&v["machine_id"]),
        s(&v["public_key"]),
        s(&v["source"]),
        ts(&v["created_at"])
    )
}

fn path(machine: &str) -> String {
    format!("/instances/{}/credential", enc(machine))
}

/// Enrolls `public_key` (standard base64, as `update-agent machine-key` prints it) for `machine`.
pub async fn enroll(conn: &Conn, machine: &str, public_key: &str) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    let v = c
        .put(&path(machine), &json!({ "public_key": public_key.trim() }))
        .await?;
    output(conn, &v, |v| crate::outln!("{}", describe(v)))
}

/// Shows the key bound to `machine`.
pub async fn show(conn: &Conn, machine: &str) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    let v = c.get(&path(machine)).await?;
    output(conn, &v, |v| crate::outln!("{}", describe(v)))
}

/// Forgets the key bound to `machine`.
pub async fn forget(conn: &Conn, machine: &str) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    c.delete(&path(machine)).await?;
    output(conn, &json!({ "forgotten": machine }), |_| {
        crate::outln!("{machine} has no machine credential any more");
    })
}
