//! `update-server package …`: publishing payloads (uploaded, or by reference to a file hosted
//! elsewhere), their extra files, listing and deleting packages, through the admin API.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use super::table::{print_table, s};
use super::{ApiClient, Conn, delete, enc, output, query, rows};

/// `package` actions.
#[derive(Debug, Subcommand)]
pub enum PackageCmd {
    /// List packages.
    List {
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
    },
    /// Show one package, with its extra files.
    Show {
        /// Package id.
        id: String,
    },
    /// Upload a payload: a Platte payload (verified by the server against its trusted keys),
    /// or with `--format update_engine` a Flatcar/ChromeOS update_engine payload (served as
    /// it is; give `--app`, `--version` and `--arch`). A Platte delta payload is linked to its
    /// full package (published before it).
    Publish {
        /// Payload file.
        file: PathBuf,
        /// Payload format: `platte` (default) or `update_engine`.
        #[arg(long, value_parser = ["platte", "update_engine"])]
        format: Option<String>,
        /// Application (update_engine payloads; for a Platte payload, the manifest must name it).
        #[arg(long)]
        app: Option<String>,
        /// Version (update_engine payloads; for a Platte payload, the manifest must name it).
        #[arg(long)]
        version: Option<String>,
        /// Architecture (update_engine payloads; for a Platte payload, the manifest must name
        /// it).
        #[arg(long)]
        arch: Option<String>,
        /// Name clients download it as.
        #[arg(long)]
        filename: Option<String>,
        /// Serve from this external codebase URL instead of the server.
        #[arg(long)]
        external_url: Option<String>,
        /// A delta payload: the id of its full package [default: the one package of the
        /// delta's application, version and arch].
        #[arg(long)]
        delta_of: Option<String>,
        /// update_engine's postinstall action attributes.
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Publish a payload hosted elsewhere, by its URL, size and digests (as Flatcar's release
    /// server lists them), with its extra files. `--verify` downloads it once and checks it;
    /// `--host` also keeps it and serves it from this server.
    AddUrl {
        /// The payload's URL (its codebase is everything up to the last `/`).
        url: String,
        /// Payload format: `update_engine` (default) or `platte` (needs --verify or --host).
        #[arg(long, value_parser = ["platte", "update_engine"], default_value = "update_engine")]
        format: String,
        /// Application.
        #[arg(long)]
        app: Option<String>,
        /// Version.
        #[arg(long)]
        version: Option<String>,
        /// Architecture.
        #[arg(long)]
        arch: Option<String>,
        /// Size in bytes.
        #[arg(long)]
        size: u64,
        /// SHA-1, hex or base64.
        #[arg(long)]
        sha1: String,
        /// SHA-256, hex or base64.
        #[arg(long)]
        sha256: String,
        /// `MetadataSize` (read from the file when it is downloaded).
        #[arg(long)]
        metadata_size: Option<u64>,
        /// An extra file under the same codebase: `NAME:SIZE:SHA1:SHA256` (repeatable).
        #[arg(long = "file", value_name = "NAME:SIZE:SHA1:SHA256")]
        files: Vec<String>,
        /// Download the payload and extra files once and check them first.
        #[arg(long)]
        verify: bool,
        /// Download, check and keep them here, and serve them from this server.
        #[arg(long)]
        host: bool,
        /// update_engine's postinstall action attributes.
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Upload an extra file (an OEM or extension sysext) of a hosted package.
    AddFile {
        /// Package id.
        id: String,
        /// The file.
        file: PathBuf,
        /// Name clients download it as [default: the file's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Name an extra file of a package hosted elsewhere (at the package's codebase).
    AddFileUrl {
        /// Package id.
        id: String,
        /// The file as `NAME:SIZE:SHA1:SHA256`.
        file: String,
        /// Download it once and check it first.
        #[arg(long)]
        verify: bool,
    },
    /// Remove an extra file of a package.
    RemoveFile {
        /// Package id.
        id: String,
        /// File name.
        name: String,
    },
    /// Delete a package no channel uses.
    Delete {
        /// Package id.
        id: String,
    },
    /// Delete a package's delta payload.
    DeleteDelta {
        /// Package id.
        id: String,
        /// The delta's source version.
        source_version: String,
    },
}

/// update_engine's postinstall action attributes an operator may set.
#[derive(Debug, clap::Args)]
pub struct ActionArgs {
    /// `MetadataSignatureRsa` to send (base64).
    #[arg(long)]
    metadata_signature_rsa: Option<String>,
    /// `deadline` to send (`now` installs at once).
    #[arg(long)]
    deadline: Option<String>,
    /// The payload is a delta (`IsDeltaPayload`).
    #[arg(long)]
    delta: bool,
    /// Send `DisablePayloadBackoff="false"` (default: true).
    #[arg(long)]
    payload_backoff: bool,
}

impl ActionArgs {
    /// As query parameters.
    fn query(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            (
                "metadata_signature_rsa",
                self.metadata_signature_rsa.clone(),
            ),
            ("deadline", self.deadline.clone()),
            ("is_delta", self.delta.then(|| "true".to_owned())),
            (
                "disable_payload_backoff",
                self.payload_backoff.then(|| "false".to_owned()),
            ),
        ]
    }
}

/// Reads `NAME:SIZE:SHA1:SHA256`.
fn file_reference(spec: &str) -> anyhow::Result<Value> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, size, sha1, sha256] = parts[..] else {
        anyhow::bail!("extra file {spec:?}: expected NAME:SIZE:SHA1:SHA256");
    };
    let size: u64 = size
        .parse()
        .with_context(|| format!("extra file {spec:?}: size {size:?} is not a number"))?;
    Ok(json!({"name": name, "size": size, "sha1": sha1, "sha256": sha256}))
}

fn packages_table(v: &Value) {
    let list = match v {
        Value::Object(_) => std::slice::from_ref(v),
        _ => rows(v),
    };
    print_table(
        &[
            "ID",
            "APP",
            "VERSION",
            "ARCH",
            "FORMAT",
            "KIND",
            "SIZE",
            "FILE",
            "EXTRA FILES",
            "DELTAS FROM",
        ],
        list.iter().map(|p| {
            let extra = p["files"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| s(&f["name"]))
                .collect::<Vec<_>>()
                .join(" ");
            let deltas = p["deltas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| s(&d["source_version"]))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                s(&p["id"]),
                s(&p["app_id"]),
                s(&p["version"]),
                s(&p["arch"]),
                s(&p["format"]),
                s(&p["kind"]),
                s(&p["size"]),
                s(&p["filename"]),
                extra,
                deltas,
            ]
        }),
    );
}

/// Runs a `package` action.
pub async fn run(conn: &Conn, cmd: PackageCmd) -> anyhow::Result<()> {
    let c = ApiClient::new(&conn.server, conn.token.as_deref())?;
    match cmd {
        PackageCmd::List { app } => output(
            conn,
            &c.get(&format!("/packages{}", query(&[("app", app)])))
                .await?,
            packages_table,
        ),
        PackageCmd::Show { id } => output(
            conn,
            &c.get(&format!("/packages/{}", enc(&id))).await?,
            packages_table,
        ),
        PackageCmd::Publish {
            file,
            format,
            app,
            version,
            arch,
            filename,
            external_url,
            delta_of,
            action,
        } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let mut pairs = vec![
                ("format", format),
                ("app", app),
                ("version", version),
                ("arch", arch),
                ("filename", filename),
                ("external_url", external_url),
                ("delta_of", delta_of),
            ];
            pairs.extend(action.query());
            let v = c.upload(&format!("/packages{}", query(&pairs)), f).await?;
            output(conn, &v, packages_table)
        }
        PackageCmd::AddUrl {
            url,
            format,
            app,
            version,
            arch,
            size,
            sha1,
            sha256,
            metadata_size,
            files,
            verify,
            host,
            action,
        } => {
            let files = files
                .iter()
                .map(|f| file_reference(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = json!({
                "format": format, "app": app, "version": version, "arch": arch, "url": url,
                "size": size, "sha1": sha1, "sha256": sha256, "metadata_size": metadata_size,
                "metadata_signature_rsa": action.metadata_signature_rsa,
                "deadline": action.deadline, "is_delta": action.delta,
                "disable_payload_backoff": !action.payload_backoff,
                "files": files, "verify": verify, "host": host,
            });
            let v = c.post("/packages/by-reference", &body).await?;
            output(conn, &v, packages_table)
        }
        PackageCmd::AddFile { id, file, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .with_context(|| format!("{} names no file: give --name", file.display()))?,
            };
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let path = format!("/packages/{}/files/{}", enc(&id), enc(&name));
            output(conn, &c.upload_put(&path, f).await?, packages_table)
        }
        PackageCmd::AddFileUrl { id, file, verify } => {
            let body = file_reference(&file)?;
            let path = format!(
                "/packages/{}/files{}",
                enc(&id),
                query(&[("verify", verify.then(|| "true".to_owned()))])
            );
            output(conn, &c.post(&path, &body).await?, packages_table)
        }
        PackageCmd::RemoveFile { id, name } => {
            let path = format!("/packages/{}/files/{}", enc(&id), enc(&name));
            output(conn, &c.delete(&path).await?, packages_table)
        }
        PackageCmd::Delete { id } => {
            let path = format!("/packages/{}", enc(&id));
            delete(&c, conn, &path, "package", &id).await
        }
        PackageCmd::DeleteDelta { id, source_version } => {
            let path = format!("/packages/{}/deltas/{}", enc(&id), enc(&source_version));
            let what = format!("{id}'s delta from");
            delete(&c, conn, &path, &what, &source_version).await
        }
    }
}
