//! Server start-up and shutdown: open the data directory, apply migrations, load the catalogue,
//! resolve tokens, start the database writer (group commit), the check-in batches, the catalogue
//! refresh and the retention pruner, bind and serve; on shutdown stop accepting, drain, let the
//! pruner finish its batch, write pending check-ins and stop the writer.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::blobs::BlobStore;
use crate::catalogue::CatalogueCache;
use crate::checkins::Checkins;
use crate::clock::{Clock, SystemClock};
use crate::config::Settings;
use crate::fleetlock::FleetLock;
use crate::http::{AppState, auth, router};
use crate::metrics::Metrics;
use crate::retention::{Pruner, RetentionMetrics};
use crate::rollout::policy::RolloutPolicy;
use crate::rollout::{RolloutEngine, RolloutMetrics, Rollouts};
use crate::service::UpdateService;
use crate::store::tx::Transactor;
use crate::store::{Store, Stores};

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// Admin token in force.
    pub admin_token: String,
    /// Read-only token in force.
    pub read_only_token: String,
    /// Where a generated admin token was written (if one was generated or read from file).
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Shared state (for in-process inspection in tests and benches).
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, drains in-flight requests, flushes check-ins, closes the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.context("server task panicked")?
    }
}

/// Starts the server with the given settings, clock and policy.
pub async fn start_with(
    settings: Settings,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn RolloutPolicy>,
) -> anyhow::Result<RunningServer> {
    let dir = &settings.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let mut stores = Stores::open_sized(&settings.database, settings.database_max_connections)
        .await
        .with_context(|| format!("opening the database {}", settings.database))?;
    tracing::info!(database = %settings.database, "database open");
    let store: Arc<dyn Store> = Arc::clone(&stores.store);
    let blobs = Arc::new(BlobStore::open(dir.join("packages")).context("opening package store")?);
    let cache = Arc::new(CatalogueCache::default());
    cache
        .reload(store.as_ref())
        .await
        .context("loading catalogue")?;
    let writer: Arc<dyn Transactor> = Arc::clone(&stores.writer);
    let checkins = Arc::new(Checkins::new(
        Arc::clone(&writer),
        crate::checkins::DEFAULT_CAPACITY,
    ));

    let admin_file = dir.join("admin-token");
    let (admin_token, _) = auth::load_or_create(settings.admin_token.as_deref(), &admin_file)
        .with_context(|| format!("admin token file {}", admin_file.display()))?;
    let ro_file = dir.join("read-only-token");
    let (read_only_token, _) = auth::load_or_create(settings.read_only_token.as_deref(), &ro_file)
        .with_context(|| format!("read-only token file {}", ro_file.display()))?;
    let tokens = Arc::new(auth::Tokens::new(&admin_token, &read_only_token));
    // The dashboard's session key: a secret kept in the data directory (mode 0600, shared by
    // replicas that share it), bound to the tokens in force.
    let key_file = dir.join(crate::dashboard::session::KEY_FILE);
    let (session_secret, _) = auth::load_or_create(None, &key_file)
        .with_context(|| format!("dashboard session key file {}", key_file.display()))?;
    let session_key = crate::dashboard::SessionKey::new(
        session_secret.as_bytes(),
        &admin_token,
        &read_only_token,
    );

    let trust = match &settings.trusted_keys {
        Some(p) => Some(Arc::new(payloads::TrustStore::load(p).with_context(
            || format!("loading trusted keys from {}", p.display()),
        )?)),
        None => None,
    };

    let listener = crate::http::listener::bind(settings.listen)
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr().context("reading bound address")?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));

    let metrics = Arc::new(Metrics::new());
    let fleetlock = Arc::new(FleetLock::new(
        Arc::clone(&stores.fleetlock),
        settings.fleetlock.clone(),
        Arc::clone(&clock),
        &metrics,
    ));
    if let Err(e) = fleetlock.groups().await {
        tracing::warn!(error = %e, "reading FleetLock groups for metrics failed");
    }
    let (tx, mut rx) = watch::channel(false);
    let pruner = Arc::new(Pruner::new(
        Arc::clone(&stores.retention),
        Arc::clone(&checkins),
        Arc::clone(&clock),
        settings.retention.clone(),
        RetentionMetrics::register(&metrics),
        rx.clone(),
    ));
    let credentials = Arc::new(crate::credential::Credentials::new(
        Arc::clone(&stores.credentials),
        settings.machine_credentials.clone(),
        Arc::clone(&clock),
        crate::credential::CredentialMetrics::register(&metrics),
    ));
    let sampler =
        crate::version_history::VersionSampler::new(Arc::clone(&store), Arc::clone(&clock));
    // The machine ids a sync shows the upstream derive from a secret kept with the data.
    let seed_file = dir.join("sync-seed");
    let (sync_seed, _) = auth::load_or_create(None, &seed_file)
        .with_context(|| format!("sync seed file {}", seed_file.display()))?;
    let syncer = Arc::new(crate::sync::Syncer::new(
        settings.sync.clone(),
        sync_seed,
        Arc::clone(&clock),
        Arc::clone(&stores.retention),
        &metrics,
    )?);
    let service = Arc::new(UpdateService {
        catalogue: Arc::clone(&cache),
        store: Arc::clone(&store),
        writer,
        checkins: Arc::clone(&checkins),
        policy,
        metrics: Arc::clone(&metrics),
        clock,
        public_url,
        omaha: settings.omaha.clone(),
        rollouts: Rollouts {
            grants: Arc::clone(&stores.rollouts),
            metrics: RolloutMetrics::register(&metrics),
            new_machines: settings.new_machines,
        },
        event_budget: crate::bounds::EventBudget::new(
            settings.omaha.event_rows_per_machine_hour,
            crate::bounds::EVENT_WINDOW_SECS,
        ),
    });
    let state = AppState {
        store: Arc::clone(&store),
        service,
        blobs,
        metrics,
        trust,
        admin_lock: Arc::new(tokio::sync::Mutex::new(())),
        proxy_header: settings.proxy_header.clone(),
        max_package_size: settings.max_package_size,
        fleetlock,
        pruner: Arc::clone(&pruner),
        credentials,
        sync: Arc::clone(&syncer),
    };
    let app = router(
        state.clone(),
        tokens,
        session_key,
        settings.http.timeouts.body_deadline,
    );

    // Pending check-ins are written every interval, batch by batch.
    let flusher = {
        let checkins = Arc::clone(&checkins);
        let mut rx = rx.clone();
        let every = settings.flush_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = checkins.flush().await {
                            tracing::warn!(error = %e, "batched check-in write failed; will retry");
                        }
                    }
                    _ = rx.changed() => break,
                }
            }
        })
    };

    // Catalogue changes made by any process sharing the database (another replica, an
    // auto-halt) are picked up through the database's catalogue generation.
    // On PostgreSQL a notification from the schema's trigger announces a change at once; the
    // generation stays the truth (a missed notification is caught by the next poll).
    let notices_source = stores.postgres().cloned();
    let refresher = {
        let cache = Arc::clone(&cache);
        let store = Arc::clone(&store);
        let mut rx = rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::catalogue::REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut notices = CatalogueNotices::new(notices_source);
            loop {
                tokio::select! {
                    _ = tick.tick() => notices.reconnect_if_due().await,
                    () = notices.next() => {}
                    _ = rx.changed() => break,
                }
                if let Err(e) = cache.refresh_if_changed(store.as_ref()).await {
                    tracing::warn!(error = %e, "refreshing the catalogue failed; will retry");
                }
            }
        })
    };

    // At start, then every interval; it stops after its current batch at shutdown.
    let pruning = pruner.spawn();
    // The version-over-time chart's samples: at start, then every sampling interval.
    let sampling = sampler.spawn(rx.clone());
    // Upstream sync: at start, then every interval, one replica at a time.
    let syncing = {
        let state = state.clone();
        syncer.spawn(move || state.fleet(), rx.clone())
    };

    let http = settings.http;
    let conn_metrics = Arc::clone(&state.metrics);
    let task = tokio::spawn(async move {
        crate::http::listener::serve(listener, app, http, conn_metrics, async move {
            let _ = rx.wait_for(|v| *v).await;
        })
        .await
        .context("serving HTTP")?;
        let _ = flusher.await;
        let _ = refresher.await;
        if let Some(p) = pruning {
            let _ = p.await;
        }
        let _ = sampling.await;
        if let Some(s) = syncing {
            let _ = s.await;
        }
        // Pending check-ins: a failed batch is put back, so a retry writes it; what still
        // fails is reported (and lost: only those machines' last contact is older).
        let mut written = 0;
        let mut last = Ok(());
        for _ in 0..3 {
            match checkins.flush().await {
                Ok(n) => {
                    written += n;
                    last = Ok(());
                    break;
                }
                Err(e) => last = Err(e),
            }
        }
        match &last {
            Ok(()) => tracing::info!(rows = written, "wrote pending check-ins at shutdown"),
            Err(e) => tracing::error!(
                error = %e,
                lost = checkins.len(),
                "could not write pending check-ins at shutdown"
            ),
        }
        stores.close().await;
        last.context("writing pending check-ins at shutdown")?;
        Ok(())
    });
    Ok(RunningServer {
        addr,
        admin_token,
        read_only_token,
        admin_token_file: settings.admin_token.is_none().then_some(admin_file),
        state,
        shutdown: tx,
        task,
    })
}

/// How long the refresher waits before listening again after its notification connection failed
/// (the catalogue generation is polled meanwhile).
const RELISTEN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The catalogue notifications of a PostgreSQL database (none on SQLite): a listener that is
/// set up again, at most every [`RELISTEN_AFTER`], after its connection failed (a database
/// restart ends it for good).
struct CatalogueNotices {
    store: Option<crate::store::PgStore>,
    listener: Option<sqlx::postgres::PgListener>,
    next_attempt: tokio::time::Instant,
}

impl CatalogueNotices {
    fn new(store: Option<crate::store::PgStore>) -> Self {
        Self {
            store,
            listener: None,
            next_attempt: tokio::time::Instant::now(),
        }
    }

    /// Listens again if there is no listener and the last attempt was long enough ago.
    async fn reconnect_if_due(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        if self.listener.is_some() || tokio::time::Instant::now() < self.next_attempt {
            return;
        }
        match store.catalogue_listener().await {
            Ok(l) => self.listener = Some(l),
            Err(e) => {
                self.next_attempt = tokio::time::Instant::now() + RELISTEN_AFTER;
                tracing::warn!(error = %e, "listening for catalogue changes failed; polling meanwhile");
            }
        }
    }

    /// The next notification (or the end of the listener, which is then dropped); never
    /// without a listener.
    async fn next(&mut self) {
        let Some(l) = &mut self.listener else {
            return std::future::pending().await;
        };
        if let Err(e) = l.recv().await {
            tracing::warn!(error = %e, "catalogue notifications lost; polling until listening again");
            self.listener = None;
            self.next_attempt = tokio::time::Instant::now() + RELISTEN_AFTER;
        }
    }
}

/// Starts the server with the system clock and the staged-rollout engine.
pub async fn start(settings: Settings) -> anyhow::Result<RunningServer> {
    start_with(settings, Arc::new(SystemClock), Arc::new(RolloutEngine)).await
}
