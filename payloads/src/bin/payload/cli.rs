//! Command-line syntax of `payload` (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use payloads::Kind;

/// Build, sign, verify, inspect and apply Platte update payloads.
#[derive(Debug, Parser)]
#[command(name = "payload", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 I/O or local error, 2 usage error, \
3 invalid payload, 4 untrusted payload, 5 delta source mismatch (use the full payload).";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 key pair: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Build and sign a payload from an image.
    Build(BuildArgs),
    /// Build and sign a delta payload that turns the image --from into the image --to.
    Delta(DeltaArgs),
    /// Add a signature to an existing payload (in place, atomically).
    Sign {
        /// Private key (PKCS#8 PEM).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Payload file.
        payload: PathBuf,
    },
    /// Verify a payload completely against trusted keys, without writing anything.
    Verify {
        /// Directory of trusted *.pub files, or one public key file.
        #[arg(long, value_name = "DIR|PUBFILE")]
        trusted: PathBuf,
        /// For a delta: the source image, so that source extents and the target digest are
        /// checked too (without it they are not).
        #[arg(long, value_name = "IMG")]
        source: Option<PathBuf>,
        /// Payload file.
        payload: PathBuf,
    },
    /// Show a payload's header, manifest and signatures (not verified).
    Inspect {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also list every operation.
        #[arg(long)]
        operations: bool,
        /// Payload file.
        payload: PathBuf,
    },
    /// Verify and write a payload into a target file, block device, or byte range of one.
    Apply(ApplyArgs),
}

/// Arguments of `payload build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Manifest, signing and compression options.
    #[command(flatten)]
    pub common: PayloadArgs,
    /// Image file to package.
    #[arg(long, value_name = "IMG")]
    pub image: PathBuf,
    /// Payload file to write.
    #[arg(long, value_name = "P")]
    pub out: PathBuf,
}

/// Arguments of `payload delta`.
#[derive(Debug, Args)]
pub struct DeltaArgs {
    /// Manifest, signing and compression options (--version is the new image's version;
    /// --block-size is also the unit of matching: use the file system's block size).
    #[command(flatten)]
    pub common: PayloadArgs,
    /// The source image (the version machines run).
    #[arg(long, value_name = "IMG")]
    pub from: PathBuf,
    /// Version of the source image; the delta applies only to it.
    #[arg(long, value_name = "VERSION")]
    pub from_version: String,
    /// The new image.
    #[arg(long, value_name = "IMG")]
    pub to: PathBuf,
    /// Payload file to write.
    #[arg(long, value_name = "P")]
    pub out: PathBuf,
}

/// Options shared by `payload build` and `payload delta`.
#[derive(Debug, Args)]
pub struct PayloadArgs {
    /// Private signing key; repeat to sign with several keys.
    #[arg(long = "key", value_name = "KEY", required = true)]
    pub keys: Vec<PathBuf>,
    /// Application id (e.g. the Omaha app id).
    #[arg(long = "app", value_name = "ID")]
    pub app_id: String,
    /// Version of the image.
    #[arg(long)]
    pub version: String,
    /// What the image is.
    #[arg(long, default_value = "partition", value_parser = parse_kind)]
    pub kind: Kind,
    /// Architecture (default: this machine's).
    #[arg(long, default_value = std::env::consts::ARCH)]
    pub arch: String,
    /// Board; empty means any.
    #[arg(long, default_value = "")]
    pub board: String,
    /// Metadata entry; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Creation time in Unix seconds (default: $SOURCE_DATE_EPOCH, else now).
    #[arg(long, value_name = "UNIX")]
    pub created: Option<u64>,
    /// Expiry time in Unix seconds; the payload is refused from then on.
    #[arg(long, value_name = "UNIX")]
    pub expires: Option<u64>,
    /// Oldest version this payload may be installed over.
    #[arg(long, value_name = "VERSION")]
    pub min_source_version: Option<String>,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// Target bytes per data operation (multiple of the block size, at most 4 MiB).
    #[arg(long, default_value_t = payloads::build::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// zstd compression level.
    #[arg(long, default_value_t = payloads::build::DEFAULT_ZSTD_LEVEL)]
    pub level: i32,
    /// Compression threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `payload apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Directory of trusted *.pub files, or one public key file.
    #[arg(long, value_name = "DIR|PUBFILE")]
    pub trusted: PathBuf,
    /// Target file or block device.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    /// Byte offset of the target range in PATH.
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Length of the target range (default: from OFFSET to the end of PATH).
    #[arg(long)]
    pub length: Option<u64>,
    /// Create PATH as a new regular file (it must not exist) sized for the payload.
    #[arg(long)]
    pub create: bool,
    /// For a delta payload: the source image or device it copies from (opened read-only).
    #[arg(long, value_name = "PATH")]
    pub source: Option<PathBuf>,
    /// Byte offset of the source range in the --source PATH.
    #[arg(long, default_value_t = 0, requires = "source")]
    pub source_offset: u64,
    /// Length of the source range (default: from --source-offset to the end of the --source PATH).
    #[arg(long, requires = "source")]
    pub source_length: Option<u64>,
    /// Payload file.
    pub payload: PathBuf,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    s.parse()
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}
