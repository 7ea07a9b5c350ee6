//! Applications: list, show, create, rename, describe or set what completes their updates,
//! delete (the store refuses while the application has packages).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Fleet, FleetResult, activity, check_text, find_app};
use crate::model::{App, CompletesOn, normalize_appid};

/// Body of `POST /apps`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct CreateApp {
    /// Omaha appid (braces and case are normalised).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The event that completes an update [default: `reboot`; `install` for applications that
    /// do not reboot].
    #[serde(default)]
    pub completes_on: CompletesOn,
}

/// Body of `PATCH /apps/{app}`.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct UpdateApp {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// The event that completes an update from now on.
    pub completes_on: Option<CompletesOn>,
}

impl Fleet {
    /// Every application.
    pub fn list_apps(&self) -> Vec<App> {
        self.catalogue().data().apps.clone()
    }

    /// The application `app` names.
    pub fn app(&self, app: &str) -> FleetResult<App> {
        find_app(&self.catalogue(), app)
    }

    /// Creates an application.
    pub async fn create_app(&self, input: CreateApp) -> FleetResult<App> {
        let id = normalize_appid(&input.id);
        check_text("id", &id, 128)?;
        check_text("name", &input.name, 200)?;
        let app = App {
            id: id.clone(),
            name: input.name,
            description: input.description,
            created_at: self.now(),
            completes_on: input.completes_on,
        };
        let _writing = self.write_lock.lock().await;
        let act = activity(
            "app_created",
            Some(&id),
            format!("application {id} created"),
        );
        self.store.insert_app(&app, &act).await?;
        self.reload().await?;
        Ok(app)
    }

    /// Renames an application or changes its description.
    pub async fn update_app(&self, app: &str, input: UpdateApp) -> FleetResult<App> {
        let _writing = self.write_lock.lock().await;
        let mut a = find_app(&self.catalogue(), app)?;
        if let Some(n) = input.name {
            check_text("name", &n, 200)?;
            a.name = n;
        }
        if let Some(d) = input.description {
            a.description = d;
        }
        if let Some(c) = input.completes_on {
            a.completes_on = c;
        }
        let act = activity(
            "app_updated",
            Some(&a.id),
            format!("application {} updated", a.id),
        );
        self.store.update_app(&a, &act).await?;
        self.reload().await?;
        Ok(a)
    }

    /// Deletes an application (refused while it has packages).
    pub async fn delete_app(&self, app: &str) -> FleetResult<()> {
        let _writing = self.write_lock.lock().await;
        let id = normalize_appid(app);
        let act = activity("app_deleted", None, format!("application {id} deleted"));
        self.store.delete_app(&id, &act).await?;
        self.reload().await?;
        Ok(())
    }
}
