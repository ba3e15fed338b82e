//! The host's Hugging Face hub: settings resolved once from the environment (`HF_HOME`,
//! `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`) and `--offline`, then handed to
//! every plugin library (and to in-process code), so model pools and task pools can fetch hub
//! ids. See `docs/hub.md`.

use std::sync::Arc;

use fusion_hub::{HubClient, HubSettings};
use fusion_plugin_api::hub::Hub;

use crate::error::usage;
use crate::plugins::Registry;
use crate::progress;

/// Resolve the hub settings and connect the hub to every loaded library. A bad setting (an
/// `HF_ENDPOINT` that is no URL, an unreadable token file) is a usage error.
pub fn connect(registry: &Registry, offline: bool, quiet: bool) -> anyhow::Result<()> {
    let hub = install(offline, quiet)?;
    registry.connect_hub(&hub);
    Ok(())
}

/// Resolve the hub settings and install the hub for in-process code too (plugin-api's
/// `hub::install`).
pub fn install(offline: bool, quiet: bool) -> anyhow::Result<Arc<dyn Hub>> {
    let settings = HubSettings::from_env(offline).map_err(|e| usage(e.to_string()))?;
    tracing::debug!(
        cache = %settings.cache_dir.display(),
        endpoint = %settings.endpoint,
        offline = settings.offline,
        token = settings.token.is_some(),
        "Hugging Face hub"
    );
    let mut client = HubClient::new(settings);
    if !quiet {
        client = client.with_progress(Arc::new(progress::bytes_bar));
    }
    let hub: Arc<dyn Hub> = Arc::new(client);
    fusion_plugin_api::hub::install(hub.clone());
    Ok(hub)
}
