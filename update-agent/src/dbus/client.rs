//! The agent's client side of the system bus, shared by everything that calls another service
//! (logind for reboots, systemd for unit restarts, `updatectl` for the agent itself): connecting
//! to the system bus or to the bus at an address (the tests' private `dbus-daemon`), and
//! proxies of another service's objects that read properties afresh on every call.

use zbus::proxy::{CacheProperties, Defaults};
use zbus::zvariant::OwnedObjectPath;

/// The bus cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to D-Bus ({bus}): {source}")]
pub struct ConnectError {
    /// `system bus` or the address.
    pub bus: String,
    /// zbus' error.
    #[source]
    pub source: Box<zbus::Error>,
}

/// Connects to the bus at `address`, or to the system bus (whose address
/// `DBUS_SYSTEM_BUS_ADDRESS` overrides).
pub async fn connect(address: Option<&str>) -> Result<zbus::Connection, ConnectError> {
    let err = |source| ConnectError {
        bus: address.unwrap_or("system bus").to_owned(),
        source: Box::new(source),
    };
    match address {
        Some(a) => zbus::connection::Builder::address(a)
            .map_err(err)?
            .build()
            .await
            .map_err(err),
        None => zbus::Connection::system().await.map_err(err),
    }
}

/// A proxy of the object at `path` of another service (a logind session, a systemd unit) that
/// does not cache properties: each read asks the service, so a state that changes (a unit's
/// `ActiveState`) or an object that vanished is seen as it is now.
pub async fn uncached_proxy<T>(conn: &zbus::Connection, path: OwnedObjectPath) -> zbus::Result<T>
where
    T: Defaults + From<zbus::Proxy<'static>>,
{
    zbus::proxy::Builder::<T>::new(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_errors_name_the_bus() {
        let e = connect(Some("unix:path=/nonexistent/platte-test-bus"))
            .await
            .unwrap_err();
        assert_eq!(e.bus, "unix:path=/nonexistent/platte-test-bus");
        assert!(
            e.to_string()
                .starts_with("cannot connect to D-Bus (unix:path=/nonexistent/platte-test-bus): "),
            "{e}"
        );
    }
}
