//! The subcommands: each turns parsed arguments into library calls and prints a short report.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use payloads::build::{BuildOptions, BuildReport, build_file};
use payloads::delta::{DeltaOptions, build_delta_file};
use payloads::format::read_prefix;
use payloads::keys::{load_signing_key, write_keypair};
use payloads::{
    ApplyOptions, Manifest, OpKind, Prefix, Source, Target, TrustStore, apply_from_reader,
    apply_from_reader_with_source, unix_now, verify_payload, verify_payload_with_source,
};
use serde_json::json;

use crate::cli::{ApplyArgs, BuildArgs, Cli, Command, DeltaArgs, PayloadArgs};
use crate::exit::UsageError;
use crate::output::Output;

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Build(args) => build(args),
        Command::Delta(args) => delta(args),
        Command::Sign { key, payload } => sign(&key, &payload),
        Command::Verify {
            trusted,
            source,
            payload,
        } => verify(&trusted, source.as_deref(), &payload),
        Command::Inspect {
            json,
            operations,
            payload,
        } => inspect(&payload, json, operations),
        Command::Apply(args) => apply(args),
    }
}

fn keygen(prefix: &Path) -> Result<()> {
    let files = write_keypair(prefix)?;
    let mut out = Output::stdout();
    writeln!(out, "key id   {}", files.key_id)?;
    writeln!(out, "private  {}", files.private.display())?;
    writeln!(out, "public   {}", files.public.display())?;
    Ok(())
}

fn created_default() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| UsageError(format!("SOURCE_DATE_EPOCH={s:?} is not a Unix time")).into()),
        Err(_) => Ok(unix_now()),
    }
}

/// Loads the signing keys and turns the shared options into [`BuildOptions`].
fn build_options(args: PayloadArgs) -> Result<(Vec<payloads::SigningKey>, BuildOptions)> {
    let keys = args
        .keys
        .iter()
        .map(|k| load_signing_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let created = match args.created {
        Some(t) => t,
        None => created_default()?,
    };
    let mut opts = BuildOptions::new(&args.app_id, &args.version, &args.arch, created);
    opts.kind = args.kind;
    opts.board = args.board;
    opts.expires = args.expires;
    opts.min_source_version = args.min_source_version;
    opts.block_size = args.block_size;
    opts.chunk_size = args.chunk_size;
    opts.zstd_level = args.level;
    if let Some(t) = args.threads {
        opts.threads = t;
    }
    let mut metadata = BTreeMap::new();
    for (k, v) in args.meta {
        if metadata.insert(k.clone(), v).is_some() {
            return Err(UsageError(format!("--meta {k} given twice")).into());
        }
    }
    opts.metadata = metadata;
    Ok((keys, opts))
}

fn build(args: BuildArgs) -> Result<()> {
    let (keys, opts) = build_options(args.common)?;
    let report = build_file(&args.image, &args.out, &keys, &opts)
        .with_context(|| format!("building {}", args.out.display()))?;
    print_report(&args.out, &report)
}

fn delta(args: DeltaArgs) -> Result<()> {
    let (keys, opts) = build_options(args.common)?;
    let opts = DeltaOptions::new(opts, &args.from_version);
    let report = build_delta_file(&args.from, &args.to, &args.out, &keys, &opts)
        .with_context(|| format!("building {}", args.out.display()))?;
    print_report(&args.out, &report)
}

fn print_report(path: &Path, report: &BuildReport) -> Result<()> {
    let m = &report.manifest;
    let mut out = Output::stdout();
    writeln!(
        out,
        "built {} ({} bytes): {} {} {} for {}",
        path.display(),
        report.payload_len,
        m.app_id,
        m.version,
        m.kind,
        m.arch
    )?;
    if let Some(source) = &m.source {
        writeln!(
            out,
            "delta from {} ({} bytes, sha256 {})",
            source.version, source.size, source.sha256
        )?;
    }
    writeln!(
        out,
        "target {} bytes, sha256 {}",
        m.target_size, m.target_sha256
    )?;
    writeln!(out, "operations {}: {}", m.operations.len(), op_counts(m))?;
    if m.is_delta() {
        writeln!(out, "target bytes {}", shares(m))?;
    }
    for id in &report.signers {
        writeln!(out, "signed by {id}")?;
    }
    Ok(())
}

const OP_KINDS: [OpKind; 4] = [
    OpKind::Replace,
    OpKind::ReplaceZstd,
    OpKind::Zero,
    OpKind::SourceCopy,
];

/// "REPLACE 3, REPLACE_ZSTD 5, ZERO 2" (SOURCE_COPY only for a delta).
fn op_counts(m: &Manifest) -> String {
    OP_KINDS
        .iter()
        .filter(|&&k| k != OpKind::SourceCopy || m.is_delta())
        .map(|&k| {
            let n = m.operations.iter().filter(|op| op.kind == k).count();
            format!("{} {n}", k.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Where a delta's target bytes come from, and how much it ships.
fn shares(m: &Manifest) -> String {
    let copied = m.target_bytes(OpKind::SourceCopy);
    let zero = m.target_bytes(OpKind::Zero);
    let new = m.target_size.saturating_sub(copied).saturating_sub(zero);
    format!(
        "copied from the source {copied} ({:.1} %), zero {zero} ({:.1} %), shipped {new} ({:.1} %) as {} bytes of data",
        percent(copied, m.target_size),
        percent(zero, m.target_size),
        percent(new, m.target_size),
        m.data_len()
    )
}

fn sign(key: &Path, payload: &Path) -> Result<()> {
    let key = load_signing_key(key)?;
    let id = payloads::sign::add_signature_file(payload, &key)?;
    writeln!(
        Output::stdout(),
        "signed {} with key {id}",
        payload.display()
    )?;
    Ok(())
}

fn open_payload(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("opening payload {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn verify(trusted: &Path, source: Option<&Path>, payload: &Path) -> Result<()> {
    let trust = TrustStore::load(trusted)?;
    let opts = ApplyOptions::new(unix_now());
    let info = match source {
        Some(path) => {
            let source =
                Source::open(path).with_context(|| format!("opening source {}", path.display()))?;
            verify_payload_with_source(open_payload(payload)?, &trust, source, opts)
        }
        None => verify_payload(open_payload(payload)?, &trust, opts),
    }
    .with_context(|| format!("verifying {}", payload.display()))?;
    let mut out = Output::stdout();
    if let Some(delta) = info.source() {
        writeln!(
            out,
            "delta from {}: {}",
            delta.version,
            if source.is_some() {
                "source extents and target digest checked against the given source"
            } else {
                "source extents and target digest NOT checked (give --source to check them)"
            }
        )?;
    }
    writeln!(
        out,
        "OK: {} is {} {} ({}, {}), {} target bytes with sha256 {}, signed by trusted key {}",
        payload.display(),
        info.app_id(),
        info.version(),
        info.kind(),
        info.arch(),
        info.target_size(),
        info.target_sha256(),
        info.signer
    )?;
    Ok(())
}

fn inspect(path: &Path, as_json: bool, list_ops: bool) -> Result<()> {
    let mut reader = open_payload(path)?;
    let (prefix, _) =
        read_prefix(&mut reader).with_context(|| format!("reading {}", path.display()))?;
    let file_len = reader
        .get_ref()
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let out = inspect_json(&prefix, file_len, list_ops);
    let mut stdout = Output::stdout();
    if as_json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        print_inspect(&mut stdout, &prefix, file_len, list_ops)?;
    }
    Ok(())
}

fn inspect_json(prefix: &Prefix, file_len: u64, list_ops: bool) -> serde_json::Value {
    let m = &prefix.manifest;
    let count = |kind: OpKind| m.operations.iter().filter(|op| op.kind == kind).count();
    let mut v = json!({
        "format_version": prefix.header.format_version,
        "file_len": file_len,
        "payload_len": prefix.payload_len(),
        "prefix_len": prefix.len(),
        "signed_sha256": prefix.signed_sha256(),
        "app_id": m.app_id,
        "version": m.version,
        "kind": m.kind.as_str(),
        "arch": m.arch,
        "board": m.board,
        "created": m.created,
        "expires": m.expires,
        "min_source_version": m.min_source_version,
        "block_size": m.block_size,
        "target_size": m.target_size,
        "target_sha256": m.target_sha256,
        "metadata": m.metadata,
        "operation_count": m.operations.len(),
        "operation_counts": {
            "REPLACE": count(OpKind::Replace),
            "REPLACE_ZSTD": count(OpKind::ReplaceZstd),
            "ZERO": count(OpKind::Zero),
            "SOURCE_COPY": count(OpKind::SourceCopy),
        },
        "source": m.source.as_ref().map(|s| json!({
            "version": s.version,
            "size": s.size,
            "sha256": s.sha256,
        })),
        "target_bytes": {
            "copied": m.target_bytes(OpKind::SourceCopy),
            "zero": m.target_bytes(OpKind::Zero),
            "shipped": m.target_bytes(OpKind::Replace) + m.target_bytes(OpKind::ReplaceZstd),
        },
        "data_len": m.data_len(),
        "signatures": prefix.signatures.iter().map(|s| s.key_id()).collect::<Vec<_>>(),
        "verified": false,
    });
    if list_ops {
        v["operations"] = m
            .operations
            .iter()
            .map(|op| {
                if op.kind == OpKind::SourceCopy {
                    json!({
                        "kind": op.kind.name(),
                        "dst_offset": op.dst_offset,
                        "dst_len": op.dst_len,
                        "src_offset": op.src_offset,
                        "src_sha256": op.src_sha256,
                    })
                } else {
                    json!({
                        "kind": op.kind.name(),
                        "dst_offset": op.dst_offset,
                        "dst_len": op.dst_len,
                        "data_len": op.data_len,
                        "data_sha256": op.data_sha256,
                    })
                }
            })
            .collect();
    }
    v
}

fn print_inspect(
    w: &mut impl std::io::Write,
    prefix: &Prefix,
    file_len: u64,
    list_ops: bool,
) -> std::io::Result<()> {
    let m = &prefix.manifest;
    writeln!(
        w,
        "format             version {}{}",
        prefix.header.format_version,
        if m.is_delta() { " (delta)" } else { " (full)" }
    )?;
    writeln!(
        w,
        "length             {} bytes (prefix {}, data {}){}",
        prefix.payload_len(),
        prefix.len(),
        m.data_len(),
        if file_len == prefix.payload_len() {
            String::new()
        } else {
            format!("; WARNING: the file has {file_len} bytes")
        }
    )?;
    writeln!(w, "app id             {}", m.app_id)?;
    writeln!(w, "version            {}", m.version)?;
    writeln!(w, "kind               {}", m.kind)?;
    writeln!(w, "arch               {}", m.arch)?;
    writeln!(
        w,
        "board              {}",
        if m.board.is_empty() {
            "(any)"
        } else {
            &m.board
        }
    )?;
    writeln!(w, "created            {} (Unix)", m.created)?;
    match m.expires {
        Some(t) => writeln!(w, "expires            {t} (Unix)")?,
        None => writeln!(w, "expires            never")?,
    }
    writeln!(
        w,
        "min source version {}",
        m.min_source_version.as_deref().unwrap_or("(none)")
    )?;
    if let Some(source) = &m.source {
        writeln!(
            w,
            "delta from         {} ({} bytes, sha256 {})",
            source.version, source.size, source.sha256
        )?;
    }
    writeln!(w, "block size         {}", m.block_size)?;
    writeln!(
        w,
        "target             {} bytes, sha256 {}",
        m.target_size, m.target_sha256
    )?;
    for (k, v) in &m.metadata {
        writeln!(w, "metadata           {k}={v}")?;
    }
    writeln!(
        w,
        "operations         {} ({})",
        m.operations.len(),
        op_counts(m)
    )?;
    if m.is_delta() {
        writeln!(w, "target bytes       {}", shares(m))?;
    }
    if list_ops {
        for (i, op) in m.operations.iter().enumerate() {
            if op.kind == OpKind::SourceCopy {
                writeln!(
                    w,
                    "  {i:>6} {:<12} dst {}+{} src {} sha256 {}",
                    op.kind.name(),
                    op.dst_offset,
                    op.dst_len,
                    op.src_offset,
                    op.src_sha256
                )?;
            } else {
                writeln!(
                    w,
                    "  {i:>6} {:<12} dst {}+{} data {} sha256 {}",
                    op.kind.name(),
                    op.dst_offset,
                    op.dst_len,
                    op.data_len,
                    op.data_sha256
                )?;
            }
        }
    }
    writeln!(
        w,
        "signatures         {} (not verified; use `payload verify`)",
        prefix.signatures.len()
    )?;
    for s in &prefix.signatures {
        writeln!(w, "  key id {}", s.key_id())?;
    }
    Ok(())
}

/// Opens (or creates) the target range described by the arguments.
fn open_target(args: &ApplyArgs, target_size: u64) -> Result<Target> {
    let path = &args.target;
    if args.create {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating target {}", path.display()))?;
        let len = args.length.unwrap_or(target_size);
        let target = file
            .set_len(args.offset.saturating_add(len))
            .with_context(|| format!("sizing target {}", path.display()))
            .and_then(|()| {
                Target::new(file, args.offset, len)
                    .with_context(|| format!("target {}", path.display()))
            });
        if target.is_err() {
            // Do not leave behind the file we just created.
            let _ = std::fs::remove_file(path);
        }
        return target;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening target {}", path.display()))?;
    let meta = file.metadata()?;
    let size = if meta.file_type().is_block_device() {
        Target::open(path)
            .with_context(|| format!("opening target {}", path.display()))?
            .len()
    } else {
        meta.len()
    };
    if args.offset > size {
        bail!(UsageError(format!(
            "--offset {} is beyond the end of {} ({size} bytes)",
            args.offset,
            path.display()
        )));
    }
    let len = args.length.unwrap_or(size - args.offset);
    Target::new(file, args.offset, len).with_context(|| format!("target {}", path.display()))
}

/// Opens the --source range read-only, if one was given.
fn open_source(args: &ApplyArgs) -> Result<Option<Source>> {
    let Some(path) = &args.source else {
        return Ok(None);
    };
    let whole = Source::open(path).with_context(|| format!("opening source {}", path.display()))?;
    let size = whole.len();
    if args.source_offset > size {
        bail!(UsageError(format!(
            "--source-offset {} is beyond the end of {} ({size} bytes)",
            args.source_offset,
            path.display()
        )));
    }
    let len = args.source_length.unwrap_or(size - args.source_offset);
    let file = File::open(path).with_context(|| format!("opening source {}", path.display()))?;
    Source::new(file, args.source_offset, len)
        .map(Some)
        .with_context(|| format!("source {}", path.display()))
}

fn apply(args: ApplyArgs) -> Result<()> {
    let trust = TrustStore::load(&args.trusted)?;
    // Read the prefix once (unverified) only to size a new target; the applier verifies it.
    let now = unix_now();
    // With --create, verify the prefix before creating anything; the applier verifies it again.
    let target_size = {
        let mut reader = open_payload(&args.payload)?;
        let (prefix, _) = read_prefix(&mut reader)
            .with_context(|| format!("reading {}", args.payload.display()))?;
        if args.create {
            prefix
                .verify(&trust, now)
                .with_context(|| format!("verifying {}", args.payload.display()))?;
        }
        prefix.manifest.target_size
    };
    let source = open_source(&args)?;
    let target = open_target(&args, target_size)?;
    let reader = open_payload(&args.payload)?;
    let opts = ApplyOptions::new(now);
    let result = match source {
        Some(source) => apply_from_reader_with_source(reader, &trust, target, source, opts),
        None => apply_from_reader(reader, &trust, target, opts),
    };
    let applied = match result {
        Ok(applied) => applied,
        Err(e) => {
            if args.create {
                // Do not leave a half-written file that we created ourselves.
                let _ = std::fs::remove_file(&args.target);
            }
            return Err(anyhow::Error::new(e).context(format!(
                "applying {} to {}",
                args.payload.display(),
                args.target.display()
            )));
        }
    };
    writeln!(
        Output::stdout(),
        "applied {} {} to {} at offset {}: {} bytes, sha256 {}, signed by {}",
        applied.info.app_id(),
        applied.info.version(),
        args.target.display(),
        args.offset,
        applied.info.target_size(),
        applied.target_sha256,
        applied.info.signer
    )?;
    Ok(())
}
