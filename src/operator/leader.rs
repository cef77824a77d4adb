//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves the issuer; only the holder of the Lease writes
//! status, ConfigMaps and the key history. kube-lease-manager holds and
//! renews the Lease with server-side apply, so two replicas never acquire
//! it at once.
//!
//! NOTE: when renewals fail with API errors, kube-lease-manager 0.13 logs
//! and retries but does not report the loss, so a leader cut off from the
//! API server may keep reconciling after its Lease expired. Its writes then
//! fail or are repeated by the new leader; both write the same content.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings of the Lease.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per replica: the pod name in a cluster.
    pub identity: String,
    /// How long a Lease stays valid without renewal; a standby replica
    /// takes over at most this long after the leader stopped renewing.
    pub duration: Duration,
}

/// A running election: `leader` is true while this replica holds the Lease.
pub struct Election {
    pub leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    /// Starts competing for the Lease, creating it when it does not exist.
    pub async fn start(client: Client, settings: &LeaseSettings) -> kube_lease_manager::Result<Self> {
        let duration = settings.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            // Renew a third of the duration before expiry, so one slow
            // request does not lose the Lease.
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("monoskope-{}", settings.identity))
            .build()
            .await?;
        let (leader, task) = manager.watch().await;
        Ok(Self { leader, task })
    }

    /// Stops competing and releases the Lease if this replica holds it.
    ///
    /// NOTE: a standby of kube-lease-manager 0.13 re-reads the Lease only
    /// when the expiry it last saw has passed, so the release shortens a
    /// takeover only a little; it stays within the lease duration.
    pub async fn release(self) {
        let Self { leader, task } = self;
        drop(leader);
        match task.await {
            Ok(Ok(_)) => tracing::info!("Leader lease released"),
            Ok(Err(err)) => tracing::warn!(error = %err, "Failed to release the leader lease; it expires by itself"),
            Err(err) => tracing::warn!(error = %err, "Leader election task failed"),
        }
    }
}
