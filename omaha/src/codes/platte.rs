//! Platte's own error codes, for failures update_engine has no code for. They sit in 3100..3199,
//! above update_engine's `ActionExitCode` range and clear of its 2000 + HTTP status codes. The
//! agent sends them in `<event errorcode>` (with update_engine's flag bits); the server names
//! them through [`DecodedErrorCode`](super::error_code::DecodedErrorCode)'s `Display`.

use super::numbered_enum;

numbered_enum! {
    /// Platte's error codes (the low 28 bits of an event `errorcode`).
    PlatteCode {
        /// 3101: the payload is not for this machine (app id, board or architecture).
        IncompatiblePayload = 3101 => "Platte: payload is not for this machine",
        /// 3102: the inactive slot is too small for the payload's image.
        SlotTooSmall = 3102 => "Platte: inactive slot too small for the image",
        /// 3103: no trusted payload keys are installed (updates are refused, fail closed).
        NoTrustedKeys = 3103 => "Platte: no trusted payload keys installed",
        /// 3104: the offered version is the one already running; installing it would overwrite
        /// the fallback slot, so the agent declines it (sent as a `3/9` "deferred" event).
        AlreadyRunning = 3104 => "Platte: offered version is already running",
        /// 3105: a delta payload's source (the active slot) is not the image the delta was built
        /// from; nothing derived from it was written, and the next check asks for the full payload.
        DeltaSourceMismatch = 3105 => "Platte: delta source does not match the running slot",
        /// 3110: a runtime extension build does not support the OS version it must run on.
        ExtensionUnsupportedOs = 3110 => "Platte: extension build does not support this OS version",
        /// 3111: switching a runtime extension's `NAME.raw` link failed (a host problem).
        ExtensionActivationFailed = 3111 => "Platte: switching the extension link failed",
        /// 3112: restarting a runtime extension's unit failed (rolled back, deny-listed).
        ExtensionRestartFailed = 3112 => "Platte: extension unit restart failed",
        /// 3113: a runtime extension's health command failed (rolled back, deny-listed).
        ExtensionHealthFailed = 3113 => "Platte: extension health check failed",
        /// 3114: the sysext refresh failed with the new build linked (rolled back, deny-listed).
        ExtensionRefreshFailed = 3114 => "Platte: sysext refresh failed with the new extension build",
    }
}
