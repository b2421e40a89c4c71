//! A leader-elected single active replica through a coordination.k8s.io
//! Lease, the way client-go's `leaderelection` with a `LeaseLock` does it:
//! get, create when absent, replace with the resourceVersion read (so of two
//! replicas racing, the API server lets one through), renew while holding,
//! release on shutdown.
//!
//! Why not a crate: kube-lease-manager (the well-kept one for kube 5) takes
//! an orphaned lease with server-side apply and renews with strategic merge
//! patches, which needs `patch` on leases and relies on field ownership for
//! mutual exclusion; kube-leader-election lags a kube major version behind.
//! Get, create and update with a resourceVersion precondition is the
//! protocol every Kubernetes controller already uses, needs only the RBAC
//! verbs get, create and update, and the stub API server models it exactly.
//!
//! Expiry is judged by the local clock from when this replica first saw the
//! holder's current record (as client-go does), never by comparing its
//! clock with the holder's `renewTime`, so clock skew between nodes cannot
//! make two replicas lead at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// How long a lease, once not renewed, keeps other replicas out, and how
/// often the holder renews (client-go's defaults: 15 s, 2 s; a holder that
/// cannot renew for 10 s stops leading).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub retry: Duration,
    pub renew_deadline: Duration,
}

/// The record last seen, and when this replica first saw it.
struct Observed {
    version: String,
    since: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

/// Whether `identity` may take or renew a lease whose spec is `spec`, this
/// replica having seen that record unchanged since `seen_for` ago.
pub fn may_take(spec: &LeaseSpec, identity: &str, seen_for: Duration, default: Duration) -> bool {
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(default);
            seen_for >= duration
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One attempt: true when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = self.settings.identity.clone();
        let current = match self.api.get_opt(&self.settings.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Another replica created it first.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.version != version) {
            self.observed = Some(Observed {
                version,
                since: Instant::now(),
            });
        }
        let seen_for = self
            .observed
            .as_ref()
            .map(|o| o.since.elapsed())
            .unwrap_or_default();
        let spec = current.spec.clone().unwrap_or_default();
        if !may_take(&spec, &me, seen_for, self.settings.duration) {
            return Ok(false);
        }
        let mut next = spec.clone();
        if spec.holder_identity.as_deref() != Some(me.as_str()) {
            next.holder_identity = Some(me);
            next.acquire_time = Some(now());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        next.renew_time = Some(now());
        next.lease_duration_seconds = Some(self.duration_seconds());
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(next),
        };
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Changed since read: another replica renewed or took it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up, if this replica holds it, so that another takes
    /// over at once instead of after the lease's duration.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                renew_time: Some(now()),
                ..spec
            }),
        };
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_taken_when_free_held_by_us_or_unrenewed_for_its_duration() {
        let free = LeaseSpec::default();
        let ours = LeaseSpec {
            holder_identity: Some("a".into()),
            ..LeaseSpec::default()
        };
        let theirs = LeaseSpec {
            holder_identity: Some("b".into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        let d = Duration::from_secs(15);
        assert!(may_take(&free, "a", Duration::ZERO, d));
        assert!(may_take(&ours, "a", Duration::ZERO, d));
        assert!(!may_take(&theirs, "a", Duration::from_secs(14), d));
        assert!(may_take(&theirs, "a", Duration::from_secs(15), d));
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..theirs
        };
        assert!(may_take(&released, "a", Duration::ZERO, d));
    }
}
