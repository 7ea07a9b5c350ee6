//! The policy editor of a group (every field of the rollout policy, field-level errors, a
//! preview of what the policy would make eligible) and the form that creates a group.
//!
//! The editor's fields are text, in the syntax the page explains next to each: this module
//! turns a stored policy into that text ([`PolicyFields::from_spec`]) and the text back into a
//! policy ([`PolicyFields::to_policy`]), so the two directions cannot drift apart. The text is
//! only parsed here; the ranges are the domain's ([`RolloutSpec::parse_valid`], the check the
//! admin API applies), and its error is shown against the field it names.

use std::collections::BTreeMap;

use maintenance_window::Window;
use maintenance_window::jiff::civil::DateTime;
use maintenance_window::jiff::tz::TimeZone;
use maud::{Markup, html};
use serde::Deserialize;

use super::overview::banners;
use super::{PageOptions, Section, csrf_field, layout};
use crate::credential::Requirement;
use crate::dashboard::Viewer;
use crate::dashboard::format::{path_segment, percent, time};
use crate::model::{App, Channel, Group, GroupPolicy};
use crate::rollout::spec::{AutoHalt, Gate, Ramp, RampStep, RateLimit, RolloutSpec, SpecError};
use crate::rollout::status::{EligibleAt, PolicyPreview, PreviewMachine};

/// The horizon of the preview's second figure ("M more in 24 h"), seconds.
pub const PREVIEW_HORIZON_SECS: i64 = 86_400;

/// The URL of a group's policy editor.
pub fn href(app_id: &str, group_id: &str) -> String {
    format!("{}/policy", super::group::href(app_id, group_id))
}

/// The URL of the form that creates a group of an application.
pub fn new_group_href(app_id: &str) -> String {
    format!("/ui/apps/{}/groups/new", path_segment(app_id))
}

/// A field of a form. Its input has the id `policy-<name>` (the editor) or `group-<name>` (the
/// new-group form), its error the id `error-<name>`; [`FORM`] names errors of the whole form.
pub type FieldName = &'static str;

/// The key of an error that belongs to no single field (shown above the form, `#error-form`).
pub const FORM: FieldName = "form";

/// Errors of a submitted form, by field (the first error of each field is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<FieldName, String>);

impl FieldErrors {
    /// Records an error against `field` (unless it already has one).
    pub fn add(&mut self, field: FieldName, message: impl Into<String>) {
        self.0.entry(field).or_insert_with(|| message.into());
    }

    /// The error of `field`, if any.
    pub fn get(&self, field: FieldName) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    /// Whether there is no error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields with an error.
    pub fn fields(&self) -> impl Iterator<Item = FieldName> + '_ {
        self.0.keys().copied()
    }
}

/// The policy editor's fields, as the form shows and sends them (every field is text; an empty
/// field sets nothing).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PolicyFields {
    /// Share of the group, 0..=100.
    pub percentage: String,
    /// Ramp start, UTC (`YYYY-MM-DDTHH:MM[:SS]`) or Unix seconds; empty: no ramp.
    pub ramp_start_at: String,
    /// Percentage at the ramp's start.
    pub ramp_start_percent: String,
    /// Linear ramp length (a duration).
    pub ramp_duration: String,
    /// Ramp steps, one `AFTER PERCENT` per line.
    pub ramp_steps: String,
    /// Grants per period.
    pub rate_limit_count: String,
    /// The rate limit's period (a duration).
    pub rate_limit_period: String,
    /// Machines in flight at once.
    pub concurrency_limit: String,
    /// Update timeout (a duration).
    pub update_timeout: String,
    /// Weekly windows, one per line.
    pub windows: String,
    /// Canaries (machine ids or operator aliases), one per line.
    pub canaries: String,
    /// Gate group id; empty: no gate.
    pub gate_group: String,
    /// Machines of the gate group that must have completed the version.
    pub gate_min_complete: String,
    /// Auto-halt failure-rate threshold, 0..=1.
    pub auto_halt_max_failure_rate: String,
    /// Auto-halt minimum attempts.
    pub auto_halt_min_attempts: String,
    /// Auto-halt weight of machines new to the rollout, 0..=1 (empty: the default).
    pub auto_halt_new_machine_weight: String,
    /// Floors, one version per line.
    pub floors: String,
    /// Blocked versions, one per line.
    pub blocked_versions: String,
    /// `yes` when downgrades are allowed (an unticked box sends nothing).
    pub allow_downgrade: Option<String>,
    /// `optional` or `required`.
    pub machine_credential: String,
}

/// Parses a number field (empty: `None`).
fn parse_opt<T: std::str::FromStr>(
    errors: &mut FieldErrors,
    field: FieldName,
    text: &str,
    expected: &str,
) -> Option<T> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    match t.parse::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            errors.add(field, format!("{t:?} is not {expected}"));
            None
        }
    }
}

/// Parses a decimal number field (empty: `None`); refuses NaN and infinities.
fn parse_number(errors: &mut FieldErrors, field: FieldName, text: &str) -> Option<f64> {
    let v = parse_opt::<f64>(errors, field, text, "a number")?;
    if v.is_finite() {
        Some(v)
    } else {
        errors.add(field, "must be a finite number");
        None
    }
}

/// Parses a duration field (empty: `None`).
fn parse_duration_field(errors: &mut FieldErrors, field: FieldName, text: &str) -> Option<u64> {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if t.is_empty() {
        return None;
    }
    match parse_duration(&t) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.add(field, e);
            None
        }
    }
}

/// The non-empty lines of a text area, trimmed.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i + 1, l))
}

/// Parses a duration: a number of seconds (`3600`), or numbers with units `w`, `d`, `h`, `m`,
/// `s` (`90m`, `1d12h`).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 3600, 90m, 12h, 1d12h)");
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too long"));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            'w' => 604_800,
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        number.clear();
    }
    if number.is_empty() && !text.is_empty() {
        Ok(total)
    } else {
        Err(bad())
    }
}

/// Formats seconds as the editor shows them: `1d12h`, `90m` → `1h30m`, `0s`.
pub fn format_duration(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")] {
        if rest >= unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Parses a ramp start: UTC `YYYY-MM-DDTHH:MM[:SS]` (a space for the `T`, a trailing `Z` or
/// ` UTC` accepted) or Unix seconds.
pub fn parse_start(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<i64>() {
        return Ok(secs);
    }
    let civil = t
        .strip_suffix("UTC")
        .or_else(|| t.strip_suffix('Z'))
        .unwrap_or(t)
        .trim()
        .replacen(' ', "T", 1);
    civil
        .parse::<DateTime>()
        .ok()
        .and_then(|dt| TimeZone::UTC.to_timestamp(dt).ok())
        .map(|ts| ts.as_second())
        .ok_or_else(|| {
            format!("{t:?} is not a UTC date and time (YYYY-MM-DDTHH:MM) or Unix seconds")
        })
}

/// Formats Unix seconds for the start field (`YYYY-MM-DDTHH:MM:SS`, UTC).
pub fn format_start(t: i64) -> String {
    crate::clock::format_utc(t).replacen(' ', "T", 1)
}

/// Parses the ramp steps: one `AFTER PERCENT` per line (`1d 5`, `36h 25%`).
fn parse_steps(errors: &mut FieldErrors, text: &str) -> Vec<RampStep> {
    let mut steps = Vec::new();
    for (n, line) in lines(text) {
        let mut parts = line.splitn(2, char::is_whitespace);
        let (after, pc) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let pc = pc.trim().trim_end_matches('%').trim();
        let after = match parse_duration(after) {
            Ok(v) => v,
            Err(e) => {
                errors.add("ramp_steps", format!("line {n}: {e}"));
                continue;
            }
        };
        match pc.parse::<f64>() {
            Ok(percent) if percent.is_finite() => steps.push(RampStep {
                after_secs: after,
                percent,
            }),
            _ => errors.add(
                "ramp_steps",
                format!("line {n}: expected \"AFTER PERCENT\", e.g. \"1d 5\" (got {line:?})"),
            ),
        }
    }
    steps
}

impl PolicyFields {
    /// The fields showing a stored policy (`spec` and the group's `machine_credential`).
    pub fn from_spec(spec: &RolloutSpec, credential: Requirement) -> Self {
        let num = |v: f64| format!("{v}");
        let joined = |items: &[String]| items.join("\n");
        let ramp = spec.ramp.as_ref();
        Self {
            percentage: spec.percentage.map(num).unwrap_or_default(),
            ramp_start_at: ramp.map(|r| format_start(r.start_at)).unwrap_or_default(),
            ramp_start_percent: ramp.map(|r| num(r.start_percent)).unwrap_or_default(),
            // The duration is ignored when there are steps: only the steps are shown.
            ramp_duration: ramp
                .filter(|r| r.steps.is_empty() && r.duration_secs > 0)
                .map(|r| format_duration(r.duration_secs))
                .unwrap_or_default(),
            ramp_steps: ramp
                .map(|r| {
                    r.steps
                        .iter()
                        .map(|s| format!("{} {}", format_duration(s.after_secs), num(s.percent)))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            rate_limit_count: spec
                .rate_limit
                .map(|r| r.count.to_string())
                .unwrap_or_default(),
            rate_limit_period: spec
                .rate_limit
                .map(|r| format_duration(r.period_secs))
                .unwrap_or_default(),
            concurrency_limit: spec
                .concurrency_limit
                .map(|c| c.to_string())
                .unwrap_or_default(),
            update_timeout: spec
                .update_timeout_secs
                .map(format_duration)
                .unwrap_or_default(),
            windows: spec
                .windows
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            canaries: joined(&spec.canaries),
            gate_group: spec
                .gate
                .as_ref()
                .map(|g| g.group.clone())
                .unwrap_or_default(),
            gate_min_complete: spec
                .gate
                .as_ref()
                .map(|g| g.min_complete.to_string())
                .unwrap_or_default(),
            auto_halt_max_failure_rate: spec
                .auto_halt
                .map(|h| num(h.max_failure_rate))
                .unwrap_or_default(),
            auto_halt_min_attempts: spec
                .auto_halt
                .map(|h| h.min_attempts.to_string())
                .unwrap_or_default(),
            auto_halt_new_machine_weight: spec
                .auto_halt
                .and_then(|h| h.new_machine_weight)
                .map(num)
                .unwrap_or_default(),
            floors: joined(&spec.floors),
            blocked_versions: joined(&spec.blocked_versions),
            allow_downgrade: spec.allow_downgrade.then(|| "yes".to_owned()),
            machine_credential: credential_name(credential).to_owned(),
        }
    }

    /// The policy these fields describe, for the group whose stored policy is `stored` (its
    /// `paused`, `halted` and `halt_counted_since` are kept: the editor never changes them);
    /// `groups` are the application's groups (a gate must name one). Syntax errors, and then
    /// the domain's validation ([`RolloutSpec::parse_valid`]), are reported by field.
    pub fn to_policy(
        &self,
        stored: &GroupPolicy,
        groups: &[Group],
    ) -> Result<GroupPolicy, FieldErrors> {
        let mut e = FieldErrors::default();
        let stored_spec = RolloutSpec::from_policy(stored).unwrap_or_default();
        let spec = RolloutSpec {
            percentage: parse_number(&mut e, "percentage", &self.percentage),
            ramp: self.ramp(&mut e),
            rate_limit: self.rate_limit(&mut e),
            concurrency_limit: parse_opt(
                &mut e,
                "concurrency_limit",
                &self.concurrency_limit,
                "a whole number of machines",
            ),
            update_timeout_secs: parse_duration_field(
                &mut e,
                "update_timeout",
                &self.update_timeout,
            ),
            windows: lines(&self.windows)
                .filter_map(|(n, l)| match l.parse::<Window>() {
                    Ok(w) => Some(w),
                    Err(err) => {
                        e.add("windows", format!("line {n}: {err}"));
                        None
                    }
                })
                .collect(),
            canaries: lines(&self.canaries).map(|(_, l)| l.to_owned()).collect(),
            gate: self.gate(&mut e, groups),
            auto_halt: self.auto_halt(&mut e),
            halted: stored_spec.halted.clone(),
            halt_counted_since: stored_spec.halt_counted_since,
            floors: lines(&self.floors).map(|(_, l)| l.to_owned()).collect(),
            blocked_versions: lines(&self.blocked_versions)
                .map(|(_, l)| l.to_owned())
                .collect(),
            allow_downgrade: self.allow_downgrade.as_deref() == Some("yes"),
        };
        let machine_credential = match self.machine_credential.trim() {
            "" | "optional" => Requirement::Optional,
            "required" => Requirement::Required,
            other => {
                e.add(
                    "machine_credential",
                    format!("{other:?} is neither optional nor required"),
                );
                Requirement::Optional
            }
        };
        if !e.is_empty() {
            return Err(e);
        }
        let mut policy = GroupPolicy {
            paused: stored.paused,
            machine_credential,
            ..GroupPolicy::default()
        };
        if let Err(err) = spec.store_into(&mut policy) {
            e.add(FORM, err.to_string());
            return Err(e);
        }
        // Windows are stored as written (`Mon-Fri 09:00 8h Europe/Berlin`), as the admin API
        // stores them, rather than in their structured form.
        if !spec.windows.is_empty() {
            let written: Vec<&str> = lines(&self.windows).map(|(_, l)| l).collect();
            policy
                .extra
                .insert("windows".to_owned(), serde_json::json!(written));
        }
        if let Err(err) = RolloutSpec::parse_valid(&policy) {
            let (field, message) = spec_error_field(&err, &spec);
            e.add(field, message);
            return Err(e);
        }
        Ok(policy)
    }

    fn ramp(&self, e: &mut FieldErrors) -> Option<Ramp> {
        let start = self.ramp_start_at.trim();
        let start_percent = parse_number(e, "ramp_start_percent", &self.ramp_start_percent);
        let duration = parse_duration_field(e, "ramp_duration", &self.ramp_duration);
        let steps = parse_steps(e, &self.ramp_steps);
        if start.is_empty() {
            if start_percent.is_some() || duration.is_some() || !steps.is_empty() {
                e.add(
                    "ramp_start_at",
                    "set the ramp's start to use a ramp (or clear its other fields)",
                );
            }
            return None;
        }
        if duration.is_some() && !steps.is_empty() {
            e.add(
                "ramp_duration",
                "give either a duration or steps, not both (the duration is ignored when there are steps)",
            );
        }
        let start_at = match parse_start(start) {
            Ok(t) => t,
            Err(err) => {
                e.add("ramp_start_at", err);
                return None;
            }
        };
        Some(Ramp {
            start_at,
            start_percent: start_percent.unwrap_or(0.0),
            duration_secs: duration.unwrap_or(0),
            steps,
        })
    }

    fn rate_limit(&self, e: &mut FieldErrors) -> Option<RateLimit> {
        let count = parse_opt(
            e,
            "rate_limit_count",
            &self.rate_limit_count,
            "a whole number of grants",
        );
        let period = parse_duration_field(e, "rate_limit_period", &self.rate_limit_period);
        match (count, period) {
            (Some(count), Some(period_secs)) => Some(RateLimit { count, period_secs }),
            (Some(_), None) if self.rate_limit_period.trim().is_empty() => {
                e.add(
                    "rate_limit_period",
                    "give the period too (or clear the count)",
                );
                None
            }
            (None, Some(_)) if self.rate_limit_count.trim().is_empty() => {
                e.add(
                    "rate_limit_count",
                    "give the number of grants too (or clear the period)",
                );
                None
            }
            _ => None,
        }
    }

    fn gate(&self, e: &mut FieldErrors, groups: &[Group]) -> Option<Gate> {
        let group = self.gate_group.trim();
        let min = parse_opt(
            e,
            "gate_min_complete",
            &self.gate_min_complete,
            "a whole number of machines",
        );
        if group.is_empty() {
            if min.is_some() {
                e.add(
                    "gate_group",
                    "choose the gate group too (or clear the number)",
                );
            }
            return None;
        }
        if !groups.iter().any(|g| g.id == group) {
            e.add(
                "gate_group",
                format!("no group {group:?} in this application"),
            );
            return None;
        }
        match min {
            Some(min_complete) => Some(Gate {
                group: group.to_owned(),
                min_complete,
            }),
            None => {
                if self.gate_min_complete.trim().is_empty() {
                    e.add(
                        "gate_min_complete",
                        "give the machines of the gate group that must have completed the version",
                    );
                }
                None
            }
        }
    }

    fn auto_halt(&self, e: &mut FieldErrors) -> Option<AutoHalt> {
        let rate = parse_number(
            e,
            "auto_halt_max_failure_rate",
            &self.auto_halt_max_failure_rate,
        );
        let attempts = parse_opt(
            e,
            "auto_halt_min_attempts",
            &self.auto_halt_min_attempts,
            "a whole number of machines",
        );
        let weight = parse_number(
            e,
            "auto_halt_new_machine_weight",
            &self.auto_halt_new_machine_weight,
        );
        let empty = |s: &str| s.trim().is_empty();
        match (rate, attempts) {
            (Some(max_failure_rate), Some(min_attempts)) => Some(AutoHalt {
                max_failure_rate,
                min_attempts,
                new_machine_weight: weight,
            }),
            _ => {
                let (r, a) = (
                    empty(&self.auto_halt_max_failure_rate),
                    empty(&self.auto_halt_min_attempts),
                );
                if r && !a {
                    e.add(
                        "auto_halt_max_failure_rate",
                        "give the failure rate too (or clear the attempts)",
                    );
                } else if a && !r {
                    e.add(
                        "auto_halt_min_attempts",
                        "give the minimum attempts too (or clear the rate)",
                    );
                } else if r && a && !empty(&self.auto_halt_new_machine_weight) {
                    e.add(
                        "auto_halt_new_machine_weight",
                        "set the failure rate and minimum attempts too (or clear the weight)",
                    );
                }
                None
            }
        }
    }
}

/// The editor field a domain validation error names, and the message shown there.
pub fn spec_error_field(err: &SpecError, spec: &RolloutSpec) -> (FieldName, String) {
    let SpecError::Range { field, problem } = err else {
        return (FORM, err.to_string());
    };
    let target = match *field {
        "percentage" => "percentage",
        "ramp" => {
            let start_ok = spec
                .ramp
                .as_ref()
                .is_some_and(|r| (0.0..=100.0).contains(&r.start_percent));
            if start_ok {
                "ramp_steps"
            } else {
                "ramp_start_percent"
            }
        }
        "ramp.steps" => "ramp_steps",
        "rate_limit.period_secs" => "rate_limit_period",
        "update_timeout_secs" => "update_timeout",
        "auto_halt.max_failure_rate" => "auto_halt_max_failure_rate",
        "auto_halt.new_machine_weight" => "auto_halt_new_machine_weight",
        _ => FORM,
    };
    (target, format!("{field} {problem}"))
}

fn credential_name(r: Requirement) -> &'static str {
    match r {
        Requirement::Optional => "optional",
        Requirement::Required => "required",
    }
}

/// What was just done, shown once on the editor after a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditorNotice {
    /// The group was just created.
    Created,
}

impl EditorNotice {
    /// The notice a `done=` query value names.
    pub fn parse(s: &str) -> Option<Self> {
        (s == "created").then_some(Self::Created)
    }
}

/// Everything the policy editor shows.
#[derive(Debug, Clone)]
pub struct EditorPage {
    /// The application.
    pub app: App,
    /// The group.
    pub group: Group,
    /// The application's groups (the gate's choices).
    pub groups: Vec<Group>,
    /// The fields (the stored policy, or what was submitted).
    pub fields: PolicyFields,
    /// Errors of the submitted fields.
    pub errors: FieldErrors,
    /// The preview of the submitted policy.
    pub preview: Option<PolicyPreview>,
    /// A digest of the stored policy the form was made from (a save is refused when the
    /// policy changed since).
    pub shown: String,
    /// What was just done.
    pub notice: Option<EditorNotice>,
}

/// The policy editor.
pub fn render_editor(viewer: &Viewer, p: &EditorPage) -> Markup {
    let spec = RolloutSpec::from_policy(&p.group.policy).unwrap_or_default();
    let f = &p.fields;
    let e = &p.errors;
    let title = if viewer.may_write() {
        "Edit the policy of"
    } else {
        "Policy of"
    };
    layout(
        Some(viewer),
        Section::Fleet,
        &format!("Policy of {}", p.group.name),
        PageOptions::default(),
        html! {
            p.sub {
                a href="/" { "Fleet" } " / " (p.app.name) " / "
                a #group-link href=(super::group::href(&p.app.id, &p.group.id)) { "group " (p.group.name) }
            }
            h1 #policy-title { (title) " group " (p.group.name) }
            @if p.notice == Some(EditorNotice::Created) {
                div.banner.notice #notice {
                    "Group " (p.group.name) " was created (track " (p.group.track) "). Set its rollout policy below."
                }
            }
            div #banners { (banners(p.group.policy.paused, spec.halted.as_ref())) }
            @if let Some(msg) = e.get(FORM) {
                div.banner.error #error-form role="alert" { (msg) }
            } @else if !e.is_empty() {
                div.banner.error #error-form role="alert" {
                    "Nothing was saved: correct the fields marked below."
                }
            }
            @if let Some(pv) = &p.preview { (preview(pv, &p.group)) }
            form #policy-form.editor method="post" action=(href(&p.app.id, &p.group.id)) novalidate {
                (csrf_field(viewer))
                input type="hidden" name="shown" value=(p.shown);
                fieldset #fieldset-percentage {
                    legend { "Percentage" }
                    (input("percentage", "Percentage", &f.percentage, "decimal", "100",
                        "Share (0–100) of the group that may get the channel's version; empty: 100. Ignored while a ramp is set.", e))
                }
                fieldset #fieldset-ramp {
                    legend { "Ramp" }
                    p.hint { "A time-driven percentage (overrides the percentage): 0 % before the start, the start percentage at it, then linearly to 100 % over the duration, or by the steps. Empty start: no ramp." }
                    div.row {
                        (field("ramp_start_at", "Start (UTC)", e, html! {
                            input #policy-ramp_start_at type="datetime-local" step="1" name="ramp_start_at"
                                value=(f.ramp_start_at) aria-invalid=[invalid(e, "ramp_start_at")]
                                aria-describedby="hint-ramp_start_at";
                        }, "YYYY-MM-DDTHH:MM in UTC (or Unix seconds)."))
                        (input("ramp_start_percent", "Start percentage", &f.ramp_start_percent, "decimal", "0", "0–100 at the start.", e))
                        (input("ramp_duration", "Duration (linear)", &f.ramp_duration, "text", "", "E.g. 4d, 36h, 1d12h, or seconds.", e))
                    }
                    (textarea("ramp_steps", "Steps (instead of a duration)", &f.ramp_steps, "1d 5\n2d 25\n3d 50\n4d 100",
                        "One step a line: the time after the start, then the percentage from then on (\"1d 5\": 5 % one day after the start). In increasing order.", e))
                }
                fieldset #fieldset-limits {
                    legend { "Limits" }
                    div.row {
                        (input("rate_limit_count", "Rate limit: grants", &f.rate_limit_count, "numeric", "", "At most this many machines granted…", e))
                        (input("rate_limit_period", "… per period", &f.rate_limit_period, "text", "", "in any sliding period (e.g. 1h, 30m).", e))
                    }
                    div.row {
                        (input("concurrency_limit", "Concurrency limit", &f.concurrency_limit, "numeric", "", "At most this many machines between grant and installed at once.", e))
                        (input("update_timeout", "Update timeout", &f.update_timeout, "text", "", "A grant with no progress event for this long (e.g. 2h) frees its slot and counts as a failure.", e))
                    }
                }
                fieldset #fieldset-windows {
                    legend { "Windows" }
                    (textarea("windows", "Weekly grant windows", &f.windows, "Mon-Fri 09:00 8h Europe/Berlin",
                        "One a line: DAYS HH:MM LENGTH [TIME_ZONE] (UTC when omitted). Grants only while one is open; none: always.", e))
                }
                fieldset #fieldset-canaries {
                    legend { "Canaries and gate" }
                    (textarea("canaries", "Canaries", &f.canaries, "",
                        "One a line: machine ids, or aliases an operator assigned. They bypass the percentage and ramp (limits still apply).", e))
                    div.row {
                        (field("gate_group", "Gate group", e, html! {
                            select #policy-gate_group name="gate_group" aria-invalid=[invalid(e, "gate_group")]
                                aria-describedby="hint-gate_group" {
                                option value="" selected[f.gate_group.is_empty()] { "no gate" }
                                @for g in &p.groups {
                                    option value=(g.id) selected[f.gate_group == g.id] {
                                        (g.name) @if g.id == p.group.id { " (this group)" }
                                    }
                                }
                                @if !f.gate_group.is_empty() && !p.groups.iter().any(|g| g.id == f.gate_group) {
                                    option value=(f.gate_group) selected { "unknown group " (f.gate_group) }
                                }
                            }
                        }, "Machines that are not canaries get a version only once this group has enough machines complete on it (and is neither paused nor halted)."))
                        (input("gate_min_complete", "Machines complete in the gate group", &f.gate_min_complete, "numeric", "", "", e))
                    }
                }
                fieldset #fieldset-auto_halt {
                    legend { "Auto-halt" }
                    div.row {
                        (input("auto_halt_max_failure_rate", "Max failure rate", &f.auto_halt_max_failure_rate, "decimal", "", "0–1: 0.02 halts above 2 % of the machines that attempted…", e))
                        (input("auto_halt_min_attempts", "Min attempts", &f.auto_halt_min_attempts, "numeric", "", "… once at least this many machines attempted.", e))
                        (input("auto_halt_new_machine_weight", "New-machine weight", &f.auto_halt_new_machine_weight, "decimal", "0.1",
                            "0–1: how much a machine new to the rollout counts (empty: 0.1).", e))
                    }
                }
                fieldset #fieldset-versions {
                    legend { "Versions" }
                    div.row {
                        (textarea("floors", "Floors", &f.floors, "", "One version a line: a machine below a floor gets the floor first.", e))
                        (textarea("blocked_versions", "Blocked versions", &f.blocked_versions, "", "One version a line: never served.", e))
                    }
                    (field("allow_downgrade", "Downgrades", e, html! {
                        label.check {
                            input #policy-allow_downgrade type="checkbox" name="allow_downgrade" value="yes"
                                checked[f.allow_downgrade.as_deref() == Some("yes")];
                            " Allow downgrades"
                        }
                    }, "Offer the channel's version to machines running a newer one, marked as a rollback."))
                }
                fieldset #fieldset-machine_credential {
                    legend { "Machine credentials" }
                    (field("machine_credential", "Check-ins", e, html! {
                        select #policy-machine_credential name="machine_credential"
                            aria-invalid=[invalid(e, "machine_credential")] aria-describedby="hint-machine_credential" {
                            option value="optional" selected[f.machine_credential != "required"] { "optional" }
                            option value="required" selected[f.machine_credential == "required"] { "required" }
                        }
                    }, "Required: a check-in not authenticated for its machine id gets no update and takes no grant."))
                }
                p.hint {
                    "Pause, halt and resume are not part of the editor: they stay as they are ("
                    a href=(super::group::href(&p.app.id, &p.group.id)) { "the group page" } " has their buttons)."
                }
                div.buttons {
                    button #preview-button type="submit" name="action" value="preview" { "Preview" }
                    @if viewer.may_write() {
                        button #save-button type="submit" name="action" value="save" { "Save" }
                    } @else {
                        span.sub #read-only-note { "Read-only: you may preview a policy, not save it." }
                    }
                }
            }
        },
    )
}

/// `"true"` when the field has an error (for `aria-invalid`).
fn invalid(e: &FieldErrors, name: FieldName) -> Option<&'static str> {
    e.get(name).map(|_| "true")
}

/// A labelled control with its hint and its error.
fn field(name: FieldName, label: &str, e: &FieldErrors, control: Markup, hint: &str) -> Markup {
    html! {
        div.field.invalid[e.get(name).is_some()] {
            label for={ "policy-" (name) } { (label) }
            (control)
            @if !hint.is_empty() { span.hint id={ "hint-" (name) } { (hint) } }
            @if let Some(msg) = e.get(name) {
                span.field-error id={ "error-" (name) } role="alert" { (msg) }
            }
        }
    }
}

/// A one-line text input (`mode`: the `inputmode`, `text` for none).
fn input(
    name: FieldName,
    label: &str,
    value: &str,
    mode: &str,
    placeholder: &str,
    hint: &str,
    e: &FieldErrors,
) -> Markup {
    let control = html! {
        input id={ "policy-" (name) } type="text" name=(name) value=(value)
            inputmode=[(mode != "text").then_some(mode)]
            placeholder=[(!placeholder.is_empty()).then_some(placeholder)]
            aria-invalid=[invalid(e, name)] aria-describedby={ "hint-" (name) };
    };
    field(name, label, e, control, hint)
}

/// A text area, one item a line.
fn textarea(
    name: FieldName,
    label: &str,
    value: &str,
    placeholder: &str,
    hint: &str,
    e: &FieldErrors,
) -> Markup {
    let control = html! {
        textarea id={ "policy-" (name) } name=(name) rows="4"
            placeholder=[(!placeholder.is_empty()).then_some(placeholder)]
            aria-invalid=[invalid(e, name)] aria-describedby={ "hint-" (name) } { (value) }
    };
    field(name, label, e, control, hint)
}

/// The preview of a submitted policy.
fn preview(p: &PolicyPreview, group: &Group) -> Markup {
    html! {
        section.card #preview {
            h2 { "Preview (not saved)" }
            p #preview-summary {
                "With this policy, " strong #preview-now { (p.now.eligible) } " machines would be eligible now, "
                strong #preview-24h { (p.more_later) } " more in 24 h."
            }
            dl.facts {
                dt { "Machines in the group" } dd #preview-machines { (p.machines) ", " (p.to_update) " of them to update" }
                dt { "Percentage now" } dd { (percent(p.now.percent)) }
                dt { "Percentage in 24 h" } dd { (percent(p.later.percent)) " (" (time(p.later.at)) ")" }
                dt { "Eligible under the stored policy" } dd #preview-stored { (p.eligible_stored) }
                dt { "Saving adds now" } dd #preview-added { (p.added_now) }
                dt { "Saving removes now" } dd #preview-removed { (p.removed_now) }
            }
            (window_note("now", &p.now))
            (window_note("in 24 h", &p.later))
            @if group.policy.paused {
                p.banner.paused { "The rollout is paused: nothing is granted until it is resumed; the figures are what the policy allows then." }
            }
            @if group.policy.machine_credential == Requirement::Required {
                p.hint { "Machine credentials are required: only machines that authenticate are granted." }
            }
            (machine_table("preview-added-machines", "First machines saving would make eligible now", &p.added_machines, p.added_now))
            (machine_table("preview-later-machines", "First machines eligible within 24 h", &p.later_machines, p.more_later))
            p.sub #preview-method {
                "Computed by the policy engine on the group's machines as they last checked in: the rules an update check applies before a grant "
                "(the version choice with floors, blocked versions and downgrades; windows; canaries; percentage and ramp). Pause and halt are left out, "
                "and so are the limits applied when a grant is made (rate, concurrency, gate, auto-halt, new machines per network)."
            }
        }
    }
}

fn window_note(when: &str, at: &EligibleAt) -> Markup {
    html! {
        @if !at.window_open {
            p.hint.window-closed {
                "No grant window is open " (when) ": " (at.waiting_for_window)
                " machine(s) admitted by the percentage wait for the next one"
                @if let Some(next) = at.next_window_at { ", which opens " (time(next)) }
                "."
            }
        }
    }
}

fn machine_table(id: &str, title: &str, machines: &[PreviewMachine], total: u64) -> Markup {
    html! {
        @if !machines.is_empty() {
            h3 { (title) @if total > machines.len() as u64 { " (" (machines.len()) " of " (total) ")" } }
            table id=(id) {
                thead { tr { th { "Machine" } th { "Alias" } th { "Version" } } }
                tbody {
                    @for m in machines {
                        tr data-machine=(m.machine_id) {
                            td.mono { a href=(super::instances::href(&m.machine_id)) { (m.machine_id) } }
                            td { (m.operator_alias.as_deref().unwrap_or(&m.alias)) }
                            td { (m.version) }
                        }
                    }
                }
            }
        }
    }
}

/// The new-group form's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NewGroupFields {
    /// Name.
    pub name: String,
    /// Omaha track (empty: the name).
    pub track: String,
    /// Channel id (empty: none).
    pub channel: String,
    /// Free text.
    pub description: String,
    /// `yes` to create the group paused.
    pub paused: Option<String>,
}

/// Everything the new-group form shows.
#[derive(Debug, Clone)]
pub struct NewGroupPage {
    /// The application.
    pub app: App,
    /// Its channels (the choices).
    pub channels: Vec<Channel>,
    /// The fields (empty, or what was submitted).
    pub fields: NewGroupFields,
    /// Errors of the submitted fields.
    pub errors: FieldErrors,
}

/// The form that creates a group.
pub fn render_new_group(viewer: &Viewer, p: &NewGroupPage) -> Markup {
    let f = &p.fields;
    let e = &p.errors;
    let group_field = |name: FieldName, label: &str, control: Markup, hint: &str| {
        html! {
            div.field.invalid[e.get(name).is_some()] {
                label for={ "group-" (name) } { (label) }
                (control)
                @if !hint.is_empty() { span.hint { (hint) } }
                @if let Some(msg) = e.get(name) {
                    span.field-error id={ "error-" (name) } role="alert" { (msg) }
                }
            }
        }
    };
    layout(
        Some(viewer),
        Section::Fleet,
        &format!("New group of {}", p.app.name),
        PageOptions::default(),
        html! {
            p.sub { a href="/" { "Fleet" } " / " (p.app.name) }
            h1 { "New group of " (p.app.name) }
            @if let Some(msg) = e.get(FORM) {
                div.banner.error #error-form role="alert" { (msg) }
            }
            form #new-group-form.editor method="post" action=(new_group_href(&p.app.id)) novalidate {
                (csrf_field(viewer))
                (group_field("name", "Name", html! {
                    input #group-name type="text" name="name" value=(f.name) required
                        aria-invalid=[invalid(e, "name")];
                }, ""))
                (group_field("track", "Track", html! {
                    input #group-track type="text" name="track" value=(f.track) placeholder="the name"
                        aria-invalid=[invalid(e, "track")];
                }, "The Omaha track its machines send (unique in the application); empty: the name."))
                (group_field("channel", "Channel", html! {
                    select #group-channel name="channel" aria-invalid=[invalid(e, "channel")] {
                        option value="" selected[f.channel.is_empty()] { "none" }
                        @for c in &p.channels {
                            option value=(c.id) selected[f.channel == c.id] { (c.name) }
                        }
                    }
                }, "The channel whose version the group rolls out."))
                (group_field("description", "Description", html! {
                    textarea #group-description name="description" rows="2"
                        aria-invalid=[invalid(e, "description")] { (f.description) }
                }, ""))
                (group_field("paused", "Start", html! {
                    label.check {
                        input #group-paused type="checkbox" name="paused" value="yes"
                            checked[f.paused.as_deref() == Some("yes")];
                        " paused (nothing is granted until it is resumed)"
                    }
                }, "Without a policy every machine of the group may get the channel's version: the policy editor opens next."))
                div.buttons { button #create-group type="submit" { "Create group" } }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_alike() {
        for (text, secs) in [
            ("3600", 3600),
            ("90m", 5400),
            ("1d12h", 129_600),
            ("1w", 604_800),
            ("45s", 45),
        ] {
            assert_eq!(parse_duration(text), Ok(secs), "{text}");
        }
        for bad in ["", "h", "12x", "1.5h", "-1h", "1h30"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(129_600), "1d12h");
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(parse_duration(&format_duration(93_784)), Ok(93_784));
    }

    #[test]
    fn starts_read_as_utc() {
        assert_eq!(parse_start("1970-01-02T00:00"), Ok(86_400));
        assert_eq!(parse_start("1970-01-02 00:00:01Z"), Ok(86_401));
        assert_eq!(parse_start("1767225600"), Ok(1_767_225_600));
        assert_eq!(parse_start(&format_start(1_767_225_601)), Ok(1_767_225_601));
        assert!(parse_start("tomorrow").is_err());
    }

    fn policy(json: &str) -> GroupPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_field_round_trips_through_the_form() {
        let stored = policy(
            r#"{"paused":true,"machine_credential":"required","percentage":12.5,
            "ramp":{"start_at":1767225600,"start_percent":1,"duration_secs":0,
              "steps":[{"after_secs":86400,"percent":5},{"after_secs":129600,"percent":25}]},
            "rate_limit":{"count":5,"period_secs":3600},"concurrency_limit":3,
            "update_timeout_secs":7200,"windows":["Mon-Fri 22:00 4h Europe/Berlin"],
            "canaries":["m1","build-01"],"gate":{"group":"g-canary","min_complete":2},
            "auto_halt":{"max_failure_rate":0.05,"min_attempts":20,"new_machine_weight":0.5},
            "halted":{"version":"2","reason":"r","at":5},"halt_counted_since":4,
            "floors":["2.0.0"],"blocked_versions":["2.1.0"],"allow_downgrade":true}"#,
        );
        let spec = RolloutSpec::parse_valid(&stored).unwrap();
        let fields = PolicyFields::from_spec(&spec, stored.machine_credential);
        assert_eq!(fields.ramp_steps, "1d 5\n1d12h 25");
        assert_eq!(fields.ramp_start_at, "2026-01-01T00:00:00");
        let groups = [Group {
            id: "g-canary".into(),
            app_id: "a".into(),
            name: "canary".into(),
            track: "canary".into(),
            channel_id: None,
            description: String::new(),
            policy: GroupPolicy::default(),
            created_at: 0,
        }];
        let back = fields.to_policy(&stored, &groups).unwrap();
        // Numbers come back as decimals (`1.0` for `1`): the same policy, compared as one.
        assert_eq!(RolloutSpec::parse_valid(&back).unwrap(), spec);
        assert!(back.paused);
        assert_eq!(back.machine_credential, Requirement::Required);
        // Without the gate group among the application's groups: refused against the field.
        let err = fields.to_policy(&stored, &[]).unwrap_err();
        assert!(err.get("gate_group").unwrap().contains("g-canary"));
    }

    #[test]
    fn errors_name_their_fields() {
        let stored = GroupPolicy::default();
        let fields = PolicyFields {
            percentage: "150".into(),
            ..Default::default()
        };
        let err = fields.to_policy(&stored, &[]).unwrap_err();
        assert_eq!(
            err.get("percentage"),
            Some("percentage must be within 0..=100")
        );
        let fields = PolicyFields {
            windows: "Mon-Fri 09:00 8h Europe/Berlin\nFunday 10:00 1h".into(),
            rate_limit_count: "5".into(),
            ramp_steps: "1d 5\nlater 10".into(),
            auto_halt_min_attempts: "x".into(),
            ..Default::default()
        };
        let err = fields.to_policy(&stored, &[]).unwrap_err();
        assert!(
            err.get("windows").unwrap().starts_with("line 2: "),
            "{err:?}"
        );
        assert!(err.get("rate_limit_period").is_some(), "{err:?}");
        assert!(err.get("ramp_start_at").is_some(), "{err:?}");
        assert!(
            err.get("ramp_steps").unwrap().starts_with("line 2: "),
            "{err:?}"
        );
        assert!(err.get("auto_halt_min_attempts").is_some(), "{err:?}");
        let steps_backwards = PolicyFields {
            ramp_start_at: "2026-01-01T00:00".into(),
            ramp_steps: "2d 5\n1d 10".into(),
            ..Default::default()
        };
        let err = steps_backwards.to_policy(&stored, &[]).unwrap_err();
        assert!(
            err.get("ramp_steps").unwrap().contains("increasing"),
            "{err:?}"
        );
        let zero_period = PolicyFields {
            rate_limit_count: "5".into(),
            rate_limit_period: "0".into(),
            ..Default::default()
        };
        let err = zero_period.to_policy(&stored, &[]).unwrap_err();
        assert!(
            err.get("rate_limit_period").unwrap().contains("positive"),
            "{err:?}"
        );
    }
}
