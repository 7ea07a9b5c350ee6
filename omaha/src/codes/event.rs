//! `<event eventtype>` and `eventresult` values, with update_engine's and Nebraska's meanings.

use super::numbered_enum;

numbered_enum! {
    /// `eventtype` of a request `<event>` (Google Omaha V3 numbers plus Nebraska's 800).
    ///
    /// update_engine sends 13/14 during download, 3 after install and after the reboot.
    EventType {
        /// 0: unknown.
        Unknown = 0 => "unknown",
        /// 1: download complete (first install).
        DownloadComplete = 1 => "download complete",
        /// 2: install complete (first install).
        InstallComplete = 2 => "install complete",
        /// 3: update complete (update_engine: after postinstall with result 1, after the
        /// reboot with result 2, and for failures with result 0).
        UpdateComplete = 3 => "update complete",
        /// 4: uninstall complete.
        UninstallComplete = 4 => "uninstall complete",
        /// 5: download started (first install).
        DownloadStarted = 5 => "download started",
        /// 6: install started.
        InstallStarted = 6 => "install started",
        /// 9: new application install started.
        NewApplicationInstallStarted = 9 => "new application install started",
        /// 10: setup started.
        SetupStarted = 10 => "setup started",
        /// 11: setup finished.
        SetupFinished = 11 => "setup finished",
        /// 12: update application started.
        UpdateStarted = 12 => "update started",
        /// 13: update download started.
        UpdateDownloadStarted = 13 => "update download started",
        /// 14: update download finished.
        UpdateDownloadFinished = 14 => "update download finished",
        /// 15: update installer started.
        UpdateInstallStarted = 15 => "update install started",
        /// 16: setup update begin.
        SetupUpdateBegin = 16 => "setup update begin",
        /// 17: setup update complete.
        SetupUpdateComplete = 17 => "setup update complete",
        /// 20: register product complete.
        RegisterProductComplete = 20 => "register product complete",
        /// 30: OEM install first check.
        OemInstallFirstCheck = 30 => "OEM install first check",
        /// 40: app-specific command started.
        AppCommandStarted = 40 => "app-specific command started",
        /// 41: app-specific command ended.
        AppCommandEnded = 41 => "app-specific command ended",
        /// 50: update check failure.
        UpdateCheckFailure = 50 => "update check failure",
        /// 100: setup failure.
        SetupFailure = 100 => "setup failure",
        /// 102: COM server failure.
        ComServerFailure = 102 => "COM server failure",
        /// 103: setup update failure.
        SetupUpdateFailure = 103 => "setup update failure",
        /// 800: Nebraska/CoreUpdate "installed, completion prevented by instance" (no known
        /// client sends it).
        UpdateInstalled = 800 => "update installed, reboot pending",
    }
}

numbered_enum! {
    /// `eventresult` of a request `<event>`; a missing attribute means 0 (error).
    EventResult {
        /// 0: error.
        Error = 0 => "error",
        /// 1: success.
        Success = 1 => "success",
        /// 2: success, restart required (update_engine: rebooted into the new version).
        SuccessReboot = 2 => "success, reboot",
        /// 3: success, application restart required.
        SuccessRestartBrowser = 3 => "success, application restart required",
        /// 4: cancelled.
        Cancelled = 4 => "cancelled",
        /// 5: error in the MSI installer.
        ErrorInstallerMsi = 5 => "installer error (MSI)",
        /// 6: error in the installer.
        ErrorInstallerOther = 6 => "installer error",
        /// 7: the server said noupdate.
        NoUpdate = 7 => "no update",
        /// 8: installer system error.
        ErrorInstallerSystem = 8 => "installer error (system)",
        /// 9: update deferred (update_engine: ignored or deferred by policy, or backoff).
        UpdateDeferred = 9 => "update deferred",
        /// 10: handoff error.
        HandoffError = 10 => "handoff error",
    }
}

#[cfg(test)]
mod tests {
    use super::{EventResult, EventType};

    #[test]
    fn numbers_round_trip_and_unknown_are_preserved() {
        for t in EventType::NAMED {
            assert_eq!(EventType::from_u32(t.to_u32()), *t);
        }
        for r in EventResult::NAMED {
            assert_eq!(EventResult::from_u32(r.to_u32()), *r);
        }
        assert_eq!(EventType::from_u32(3), EventType::UpdateComplete);
        assert_eq!(EventType::from_u32(13), EventType::UpdateDownloadStarted);
        assert_eq!(EventType::from_u32(14), EventType::UpdateDownloadFinished);
        assert_eq!(EventType::from_u32(800), EventType::UpdateInstalled);
        assert_eq!(EventType::from_u32(54), EventType::Other(54));
        assert_eq!(EventType::Other(54).to_u32(), 54);
        assert_eq!(EventResult::from_u32(2), EventResult::SuccessReboot);
        assert_eq!(EventResult::from_u32(99), EventResult::Other(99));
        assert_eq!(EventResult::Other(99).to_string(), "unknown (99)");
    }
}
