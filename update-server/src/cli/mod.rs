//! The operator CLI: `update-server serve` and the subcommands that drive the admin API over
//! HTTP (`app`, `channel`, `group`, `package`, `instance`, `fleetlock`, `activity`, `prune`),
//! printing tables or, with `--json`, the API's JSON; and `simulate`, the fleet simulator.

mod client;
pub mod credential;
pub mod fleetlock;
pub mod package;
pub mod prune;
pub mod rollout;
pub mod sync;
mod table;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

pub use client::ApiClient;
use table::{print_table, s, ts};

use crate::config::ServeArgs;

/// Platte update server and its admin CLI.
#[derive(Debug, Parser)]
#[command(name = "update-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection options of the admin subcommands.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Server base URL.
    #[arg(
        long,
        global = true,
        env = "UPDATE_SERVER_URL",
        default_value = "http://127.0.0.1:8370"
    )]
    pub server: String,
    /// Bearer token (admin, or read-only for listings).
    #[arg(
        long,
        global = true,
        env = "UPDATE_SERVER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (boxed: its options are much larger than any other command's).
    Serve(Box<ServeArgs>),
    /// Print the admin API's OpenAPI document.
    Openapi,
    /// Copy an installation's SQLite database into a new PostgreSQL database (stop the server
    /// first; package files stay in the data directory).
    MigrateStore {
        /// The SQLite installation's data directory (its `platte.sqlite` is read).
        #[arg(long, value_name = "DATA_DIR")]
        from: std::path::PathBuf,
        /// The PostgreSQL database to fill, which must be empty: `postgres://USER@HOST/DB`.
        #[arg(
            long,
            value_name = "URL",
            env = "UPDATE_SERVER_DATABASE",
            hide_env_values = true
        )]
        to: String,
    },
    /// Applications.
    App {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: AppCmd,
    },
    /// Channels.
    Channel {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: ChannelCmd,
    },
    /// Groups.
    Group {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Packages.
    Package {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: package::PackageCmd,
    },
    /// Instances (machines).
    Instance {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: InstanceCmd,
    },
    /// FleetLock reboot groups: slots and holders.
    Fleetlock {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: fleetlock::FleetLockCmd,
    },
    /// Staged rollouts of a group: status, preview, pause, resume, policy.
    Rollout {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Action.
        #[command(subcommand)]
        cmd: rollout::RolloutCmd,
    },
    /// Simulate a fleet of machines going through a staged rollout (see docs/usage/rollouts.md).
    Simulate(Box<crate::simulate::SimulateArgs>),
    /// Create a Nebraska database's applications, packages, channels and groups in this
    /// server, reporting what does not map (see docs/usage/flatcar.md).
    ImportNebraska(Box<crate::nebraska::ImportArgs>),
    /// Prune old rows now with the server's retention settings (events, status history,
    /// activity, settled grants; instances not seen for the configured period).
    Prune {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Follow the upstream Omaha server of the server's `[sync]` configuration: run a pass
    /// now, or show each channel's last check (`sync status`).
    Sync {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// `status`, or nothing to run a pass now.
        #[command(subcommand)]
        cmd: Option<sync::SyncCmd>,
    },
    /// The activity feed.
    Activity {
        /// Connection.
        #[command(flatten)]
        conn: Conn,
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// `app` actions.
#[derive(Debug, Subcommand)]
pub enum AppCmd {
    /// List applications.
    List,
    /// Show one.
    Show {
        /// appid.
        app: String,
    },
    /// Create one.
    Create {
        /// Omaha appid.
        id: String,
        /// Name.
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// What completes an update: `reboot` (the first check after the update's reboot;
        /// the default, for operating systems) or `install` (for applications that do not
        /// reboot).
        #[arg(long, value_parser = ["reboot", "install"])]
        completes_on: Option<String>,
    },
    /// Change what completes an application's updates.
    Set {
        /// appid.
        app: String,
        /// `reboot` or `install`.
        #[arg(long, value_parser = ["reboot", "install"])]
        completes_on: String,
    },
    /// Delete one (refused while it has packages).
    Delete {
        /// appid.
        app: String,
    },
}

/// `channel` actions.
#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    /// List an application's channels.
    List {
        /// appid.
        app: String,
    },
    /// Create a channel.
    Create {
        /// appid.
        app: String,
        /// Channel name.
        name: String,
    },
    /// Point a channel at a package (for the package's arch unless --arch is given).
    Set {
        /// appid.
        app: String,
        /// Channel id or name.
        channel: String,
        /// Package id.
        package: String,
        /// Architecture pointer to set.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Delete a channel.
    Delete {
        /// appid.
        app: String,
        /// Channel id or name.
        channel: String,
    },
}

/// `group` actions.
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List an application's groups.
    List {
        /// appid.
        app: String,
    },
    /// Create a group.
    Create {
        /// appid.
        app: String,
        /// Group name.
        name: String,
        /// Omaha track clients send [default: the name].
        #[arg(long)]
        track: Option<String>,
        /// Channel to follow.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Change a group's channel or pause/resume its rollout.
    Update {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
        /// Channel to follow ("" detaches).
        #[arg(long)]
        channel: Option<String>,
        /// Pause the rollout.
        #[arg(long, conflicts_with = "resume")]
        pause: bool,
        /// Resume the rollout.
        #[arg(long)]
        resume: bool,
    },
    /// Delete a group.
    Delete {
        /// appid.
        app: String,
        /// Group id, track or name.
        group: String,
    },
}

/// `instance` actions.
#[derive(Debug, Subcommand)]
pub enum InstanceCmd {
    /// List instances.
    List {
        /// Application.
        #[arg(long)]
        app: Option<String>,
        /// Group id.
        #[arg(long)]
        group: Option<String>,
        /// Version.
        #[arg(long)]
        version: Option<String>,
        /// Status.
        #[arg(long)]
        status: Option<String>,
        /// Substring of machine id, alias or IP.
        #[arg(long)]
        search: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a machine with its status history.
    Show {
        /// Machine id.
        machine: String,
    },
    /// Delete a machine (retired host).
    Delete {
        /// Machine id.
        machine: String,
        /// Only this application's record.
        #[arg(long)]
        app: Option<String>,
    },
    /// Let a machine be offered versions it refused again (rolled back from, deny-listed).
    Retry {
        /// Machine id.
        machine: String,
        /// Only this application [default: all].
        #[arg(long)]
        app: Option<String>,
        /// Only this version [default: every refused version].
        #[arg(long)]
        version: Option<String>,
    },
    /// Bind a machine id to its machine key (as `update-agent machine-key` prints it), replacing
    /// any key bound before.
    Enroll {
        /// Machine id.
        machine: String,
        /// The ed25519 public key, standard base64.
        public_key: String,
    },
    /// Show the machine key bound to a machine id.
    Credential {
        /// Machine id.
        machine: String,
    },
    /// Forget the machine key bound to a machine id (a re-installed host with a new key).
    ForgetCredential {
        /// Machine id.
        machine: String,
    },
    /// Assign a machine an operator alias (rollout canaries may name it; the alias a machine
    /// reports itself is never matched). An empty alias removes it.
    SetAlias {
        /// Machine id.
        machine: String,
        /// The alias ("" removes it).
        alias: String,
    },
}

fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn output(conn: &Conn, v: &Value, render: impl FnOnce(&Value)) -> anyhow::Result<()> {
    if conn.json {
        crate::outln!("{}", serde_json::to_string_pretty(v)?);
    } else {
        render(v);
    }
    Ok(())
}

/// The items of an answer to print: a list's elements, the one object a show, create or update
/// answers, nothing for `null`.
fn rows(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        Value::Null => &[],
        one => std::slice::from_ref(one),
    }
}

/// Deletes `path` and says so: `deleted WHAT NAME` (`{"deleted": NAME}` with `--json`).
async fn delete(
    c: &ApiClient,
    conn: &Conn,
    path: &str,
    what: &str,
    name: &str,
) -> anyhow::Result<()> {
    c.delete(path).await?;
    output(conn, &json!({ "deleted": name }), |_| {
        crate::outln!("deleted {what} {name}")
    })
}

fn apps_table(v: &Value) {
    print_table(
        &["ID", "NAME", "COMPLETES ON", "CREATED"],
        rows(v).iter().map(|a| {
            vec![
                s(&a["id"]),
                s(&a["name"]),
                s(&a["completes_on"]),
                ts(&a["created_at"]),
            ]
        }),
    );
}

/// Runs an admin subcommand (everything but `serve`/`openapi`).
pub async fn run_admin(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(_) | Command::Openapi | Command::MigrateStore { .. } => {
            anyhow::bail!("not an admin command")
        }
        Command::App { conn, cmd } => {
            let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
            match cmd {
                AppCmd::List => output(&conn, &c.get("/apps").await?, apps_table),
                AppCmd::Show { app } => output(
                    &conn,
                    &c.get(&format!("/apps/{}", enc(&app))).await?,
                    apps_table,
                ),
                AppCmd::Create {
                    id,
                    name,
                    description,
                    completes_on,
                } => {
                    let mut body = json!({"id": id, "name": name, "description": description});
                    if let Some(on) = completes_on {
                        body["completes_on"] = json!(on);
                    }
                    let v = c.post("/apps", &body).await?;
                    output(&conn, &v, apps_table)
                }
                AppCmd::Set { app, completes_on } => {
                    let path = format!("/apps/{}", enc(&app));
                    let v = c
                        .patch(&path, &json!({"completes_on": completes_on}))
                        .await?;
                    output(&conn, &v, apps_table)
                }
                AppCmd::Delete { app } => {
                    let path = format!("/apps/{}", enc(&app));
                    delete(&c, &conn, &path, "application", &app).await
                }
            }
        }
        Command::Channel { conn, cmd } => {
            let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
            let render = |v: &Value| {
                print_table(
                    &["ID", "NAME", "PACKAGES (arch=package)"],
                    rows(v).iter().map(|ch| {
                        let pointers = |field: &str, label: &str| {
                            ch[field]
                                .as_object()
                                .into_iter()
                                .flatten()
                                .map(|(k, v)| format!("{k}{label}={}", s(v)))
                                .collect::<Vec<_>>()
                        };
                        let mut pk = pointers("packages", "");
                        pk.extend(pointers("update_engine_packages", "/update_engine"));
                        let pk = pk.join(" ");
                        vec![s(&ch["id"]), s(&ch["name"]), pk]
                    }),
                );
            };
            match cmd {
                ChannelCmd::List { app } => output(
                    &conn,
                    &c.get(&format!("/apps/{}/channels", enc(&app))).await?,
                    render,
                ),
                ChannelCmd::Create { app, name } => output(
                    &conn,
                    &c.post(
                        &format!("/apps/{}/channels", enc(&app)),
                        &json!({"name": name}),
                    )
                    .await?,
                    render,
                ),
                ChannelCmd::Set {
                    app,
                    channel,
                    package,
                    arch,
                } => {
                    let arch = match arch {
                        Some(a) => a,
                        None => s(&c.get(&format!("/packages/{}", enc(&package))).await?["arch"]),
                    };
                    let body = json!({"packages": {arch: package}});
                    let path = format!("/apps/{}/channels/{}", enc(&app), enc(&channel));
                    output(&conn, &c.patch(&path, &body).await?, render)
                }
                ChannelCmd::Delete { app, channel } => {
                    let path = format!("/apps/{}/channels/{}", enc(&app), enc(&channel));
                    delete(&c, &conn, &path, "channel", &channel).await
                }
            }
        }
        Command::Group { conn, cmd } => {
            let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
            let render = |v: &Value| {
                print_table(
                    &["ID", "NAME", "TRACK", "CHANNEL", "PAUSED"],
                    rows(v).iter().map(|g| {
                        vec![
                            s(&g["id"]),
                            s(&g["name"]),
                            s(&g["track"]),
                            s(&g["channel_id"]),
                            s(&g["policy"]["paused"]),
                        ]
                    }),
                );
            };
            match cmd {
                GroupCmd::List { app } => output(
                    &conn,
                    &c.get(&format!("/apps/{}/groups", enc(&app))).await?,
                    render,
                ),
                GroupCmd::Create {
                    app,
                    name,
                    track,
                    channel,
                } => {
                    let body = json!({"name": name, "track": track, "channel": channel});
                    output(
                        &conn,
                        &c.post(&format!("/apps/{}/groups", enc(&app)), &body)
                            .await?,
                        render,
                    )
                }
                GroupCmd::Update {
                    app,
                    group,
                    channel,
                    pause,
                    resume,
                } => {
                    let path = format!("/apps/{}/groups/{}", enc(&app), enc(&group));
                    let mut body = json!({});
                    if let Some(ch) = channel {
                        body["channel"] = json!(ch);
                    }
                    if pause || resume {
                        let mut policy = c.get(&path).await?["policy"].clone();
                        policy["paused"] = json!(pause);
                        body["policy"] = policy;
                    }
                    output(&conn, &c.patch(&path, &body).await?, render)
                }
                GroupCmd::Delete { app, group } => {
                    let path = format!("/apps/{}/groups/{}", enc(&app), enc(&group));
                    delete(&c, &conn, &path, "group", &group).await
                }
            }
        }
        Command::Package { conn, cmd } => package::run(&conn, cmd).await,
        Command::Instance { conn, cmd } => {
            let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
            match cmd {
                InstanceCmd::List {
                    app,
                    group,
                    version,
                    status,
                    search,
                    limit,
                } => {
                    let q = query(&[
                        ("app", app),
                        ("group", group),
                        ("version", version),
                        ("status", status),
                        ("search", search),
                        ("limit", Some(limit.to_string())),
                    ]);
                    output(&conn, &c.get(&format!("/instances{q}")).await?, |v| {
                        print_table(
                            &[
                                "MACHINE",
                                "ALIAS",
                                "APP",
                                "VERSION",
                                "STATUS",
                                "IP",
                                "LAST CHECK",
                            ],
                            rows(&v["instances"]).iter().map(|i| {
                                vec![
                                    s(&i["machine_id"]),
                                    s(&i["alias"]),
                                    s(&i["app_id"]),
                                    s(&i["version"]),
                                    s(&i["status"]),
                                    s(&i["ip"]),
                                    ts(&i["last_check_at"]),
                                ]
                            }),
                        );
                        crate::outln!(
                            "{} of {} shown",
                            rows(&v["instances"]).len(),
                            s(&v["total"])
                        );
                    })
                }
                InstanceCmd::Show { machine } => output(
                    &conn,
                    &c.get(&format!("/instances/{}", enc(&machine))).await?,
                    |v| {
                        if let Some(alias) = v["operator_alias"].as_str() {
                            crate::outln!("{machine} operator alias {alias}");
                        }
                        for a in rows(&v["apps"]) {
                            let i = &a["instance"];
                            crate::outln!(
                                "{} app {} version {} status {} {} (granted {}{}, last check {})",
                                s(&i["machine_id"]),
                                s(&i["app_id"]),
                                s(&i["version"]),
                                s(&i["status"]),
                                s(&i["status_detail"]),
                                s(&i["granted_version"]),
                                i["served_payload"]
                                    .as_str()
                                    .map(|p| format!(" as {p} payload"))
                                    .unwrap_or_default(),
                                ts(&i["last_check_at"])
                            );
                            print_table(
                                &["AT", "STATUS", "VERSION", "DETAIL"],
                                rows(&a["history"]).iter().map(|h| {
                                    vec![
                                        ts(&h["at"]),
                                        s(&h["status"]),
                                        s(&h["version"]),
                                        s(&h["detail"]),
                                    ]
                                }),
                            );
                            for r in rows(&a["refused_versions"]) {
                                crate::outln!(
                                    "never offered again: {} ({} at {}; clear with \
                                     `update-server instance retry {} --app {} --version {}`)",
                                    s(&r["version"]),
                                    s(&r["reason"]),
                                    ts(&r["at"]),
                                    s(&i["machine_id"]),
                                    s(&r["app_id"]),
                                    s(&r["version"]),
                                );
                            }
                        }
                    },
                ),
                InstanceCmd::Retry {
                    machine,
                    app,
                    version,
                } => {
                    let q = query(&[("app", app), ("version", version)]);
                    let v = c
                        .post(
                            &format!("/instances/{}/retry{q}", enc(&machine)),
                            &json!({}),
                        )
                        .await?;
                    output(&conn, &v, |v| {
                        let cleared = rows(&v["cleared"]);
                        if cleared.is_empty() {
                            crate::outln!("{machine} refused no version; nothing to clear");
                        }
                        for r in cleared {
                            crate::outln!(
                                "{machine} may be offered {} of {} again (was {})",
                                s(&r["version"]),
                                s(&r["app_id"]),
                                s(&r["reason"])
                            );
                        }
                    })
                }
                InstanceCmd::Enroll {
                    machine,
                    public_key,
                } => credential::enroll(&conn, &machine, &public_key).await,
                InstanceCmd::Credential { machine } => credential::show(&conn, &machine).await,
                InstanceCmd::ForgetCredential { machine } => {
                    credential::forget(&conn, &machine).await
                }
                InstanceCmd::SetAlias { machine, alias } => {
                    let v = c
                        .patch(
                            &format!("/instances/{}", enc(&machine)),
                            &json!({ "alias": alias }),
                        )
                        .await?;
                    output(&conn, &v, |v| match v["operator_alias"].as_str() {
                        Some(a) => crate::outln!("{machine} is now called {a}"),
                        None => crate::outln!("{machine} has no operator alias"),
                    })
                }
                InstanceCmd::Delete { machine, app } => {
                    let path = format!("/instances/{}{}", enc(&machine), query(&[("app", app)]));
                    delete(&c, &conn, &path, "instance", &machine).await
                }
            }
        }
        Command::Fleetlock { conn, cmd } => fleetlock::run(&conn, cmd).await,
        Command::Rollout { conn, cmd } => rollout::run(&conn, cmd).await,
        Command::Prune { conn, dry_run } => prune::run(&conn, dry_run).await,
        Command::Sync { conn, cmd } => sync::run(&conn, cmd).await,
        Command::Simulate(args) => crate::simulate::run(*args).await,
        Command::ImportNebraska(args) => crate::nebraska::run(*args).await,
        Command::Activity { conn, app, limit } => {
            let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
            let q = query(&[("app", app), ("limit", Some(limit.to_string()))]);
            output(&conn, &c.get(&format!("/activity{q}")).await?, |v| {
                print_table(
                    &["AT", "SEVERITY", "KIND", "MESSAGE"],
                    rows(v).iter().map(|a| {
                        vec![
                            ts(&a["at"]),
                            s(&a["severity"]),
                            s(&a["kind"]),
                            s(&a["message"]),
                        ]
                    }),
                );
            })
        }
    }
}
