//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves the issuer; only the holder of the Lease writes
//! status, ConfigMaps and the key history. kube-lease-manager holds and
//! renews the Lease with server-side apply, so two replicas never acquire
//! it at once.
//!
//! When renewals fail with API errors, kube-lease-manager 0.13 logs and
//! retries but does not report the loss. So this module also reads the
//! Lease itself while leading. It steps down when no read has confirmed the
//! hold for one lease duration, so a leader cut off from the API server
//! stops writing before a standby can take over.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
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
    manager_leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    watchdog: JoinHandle<()>,
}

impl Election {
    /// Starts competing for the Lease, creating it when it does not exist.
    pub async fn start(client: Client, settings: &LeaseSettings) -> kube_lease_manager::Result<Self> {
        let duration = settings.duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client.clone(), &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(duration)
            // Renew a third of the duration before expiry, so one slow
            // request does not lose the Lease.
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("monoskope-{}", settings.identity))
            .build()
            .await?;
        let (manager_leader, task) = manager.watch().await;
        let (sender, leader) = watch::channel(false);
        let leases: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let watchdog = tokio::spawn(watch_lease(manager_leader.clone(), sender, leases, settings.clone()));
        Ok(Self { leader, manager_leader, task, watchdog })
    }

    /// Stops competing and releases the Lease if this replica holds it.
    ///
    /// NOTE: a standby of kube-lease-manager 0.13 re-reads the Lease only
    /// when the expiry it last saw has passed. The release therefore
    /// shortens a takeover only a little, which stays within the duration.
    pub async fn release(self) {
        let Self { leader, manager_leader, task, watchdog } = self;
        watchdog.abort();
        drop(leader);
        drop(manager_leader);
        match task.await {
            Ok(Ok(_)) => tracing::info!("Leader lease released"),
            Ok(Err(err)) => tracing::warn!(error = %err, "Failed to release the leader lease; it expires by itself"),
            Err(err) => tracing::warn!(error = %err, "Leader election task failed"),
        }
    }
}

/// Forwards kube-lease-manager's view to `leader`, but only while a read of
/// the Lease within the last lease duration showed this replica as holder
/// with an unexpired renewal.
async fn watch_lease(
    mut manager_leader: watch::Receiver<bool>,
    leader: watch::Sender<bool>,
    leases: Api<Lease>,
    settings: LeaseSettings,
) {
    let interval = (settings.duration / 3).max(Duration::from_millis(500));
    let mut confirmed: Option<SystemTime> = None;

    loop {
        let acquired = *manager_leader.borrow_and_update();
        if acquired {
            match leases.get_opt(&settings.name).await {
                // The Lease shows whether this replica holds it; only a
                // failed read leaves the last confirmation standing.
                Ok(lease) => {
                    let now = SystemTime::now();
                    let held = lease.as_ref().and_then(|lease| held_until(lease, &settings.identity));
                    confirmed = held.filter(|until| *until > now).map(|_| now);
                }
                Err(err) => tracing::warn!(error = crate::errors::error_chain(&err), "Failed to read the leader Lease"),
            }
        } else {
            confirmed = None;
        }

        let leads = still_leads(acquired, confirmed, SystemTime::now(), settings.duration);
        if *leader.borrow() != leads {
            if !leads && acquired {
                tracing::warn!(
                    lease = %settings.name,
                    "Cannot confirm the leader Lease within its duration; stepping down until it is renewed"
                );
            }
            leader.send_replace(leads);
        }

        tokio::select! {
            changed = manager_leader.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Returns when the Lease expires if `identity` holds it.
fn held_until(lease: &Lease, identity: &str) -> Option<SystemTime> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let duration = u64::try_from(spec.lease_duration_seconds?).ok()?;
    let renewed = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(renewed.as_second()).ok()?);
    Some(renewed + Duration::from_secs(duration))
}

/// Decides whether this replica may act as leader: kube-lease-manager
/// reports that it acquired the Lease, and a read of the Lease confirmed
/// that less than one lease duration ago.
fn still_leads(acquired: bool, confirmed: Option<SystemTime>, now: SystemTime, duration: Duration) -> bool {
    acquired && confirmed.is_some_and(|at| now.duration_since(at).unwrap_or_default() < duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    #[test]
    fn leads_only_while_confirmed() {
        let now = SystemTime::now();
        assert!(still_leads(true, Some(now - Duration::from_secs(5)), now, DURATION));
        assert!(!still_leads(true, Some(now - Duration::from_secs(16)), now, DURATION));
        assert!(!still_leads(true, None, now, DURATION));
        assert!(!still_leads(false, Some(now), now, DURATION));
    }

    #[test]
    fn lease_of_another_holder_is_not_held() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "monoskope-operator"},
            "spec": {"holderIdentity": "op-a", "leaseDurationSeconds": 15, "renewTime": "2026-12-05T00:00:00.000000Z"}
        }))
        .unwrap();
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_428_800 + 15);
        assert_eq!(held_until(&lease, "op-a"), Some(expected));
        assert_eq!(held_until(&lease, "op-b"), None);
    }
}
