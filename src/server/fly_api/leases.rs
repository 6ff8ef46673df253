//! Machine leases (Fly docs, machines/api/machines-resource: "Machine leases can be used to
//! obtain an exclusive lock on modifying a Machine"): what lets the launcher that retires a
//! stale pooled Machine destroy it while no launch can start it. While the lease lives, a start, stop or
//! destroy needs its nonce; anyone else gets 409.

use super::*;
use serde::Deserialize;

/// The header that carries a held lease's nonce on the calls it permits.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";

/// A lease this caller holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Lease {
    /// What proves the holder: sent on every call the lease permits. Not a visitor's secret,
    /// but it lets its holder change the Machine, so it is never printed.
    pub nonce: String,
    /// When Fly lets it lapse, in seconds since the epoch.
    pub expires_at: u64,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("nonce", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Fly's answer: fly-go's `{"status", "data": {nonce, expires_at, ...}}`, or the lease alone
/// (Fly's older OpenAPI file).
#[derive(Deserialize)]
struct LeaseAnswer {
    data: Option<LeaseData>,
    nonce: Option<String>,
    #[serde(default)]
    expires_at: u64,
}

#[derive(Deserialize)]
struct LeaseData {
    nonce: String,
    #[serde(default)]
    expires_at: u64,
}

impl FlyApi {
    /// Takes the lease of Machine `id` for `ttl`: `Ok(None)` when someone else holds it (409).
    /// One attempt, never retried: a caller racing others for a Machine moves on to another
    /// rather than wait (and a retry after a lost answer would meet its own lease).
    pub async fn acquire_lease(
        &self,
        app: &str,
        id: MachineId,
        ttl: Duration,
        description: &str,
    ) -> Result<Option<Lease>, FlyApiError> {
        let body = serde_json::json!({ "ttl": ttl.as_secs().max(1), "description": description });
        let body = Bytes::from(body.to_string());
        let url = self.machines_url(app, &[id.as_str(), "lease"]);
        let answer = self
            .execute(
                "lease",
                Method::POST,
                Some(&body),
                // No time for a retry: one attempt, of at least a second.
                Duration::ZERO,
                |left| (url.clone(), self.attempt_timeout(left)),
            )
            .await;
        match answer {
            Ok(bytes) => {
                let answer: LeaseAnswer = decode(&bytes)?;
                let alone = answer.nonce.map(|nonce| LeaseData {
                    nonce,
                    expires_at: answer.expires_at,
                });
                let data = answer.data.or(alone).ok_or_else(|| FlyApiError::Decode {
                    message: "a lease answer without a nonce".to_owned(),
                })?;
                Ok(Some(Lease {
                    nonce: data.nonce,
                    expires_at: data.expires_at,
                }))
            }
            Err(FlyApiError::Api { status: 409, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Destroys a Machine whose lease the caller holds.
    pub async fn delete_leased(
        &self,
        app: &str,
        id: MachineId,
        lease: &Lease,
    ) -> Result<Deleted, FlyApiError> {
        let url = self.machines_url(app, &[id.as_str()]);
        match self.under_lease("delete", Method::DELETE, url, lease).await {
            Ok(_) => Ok(Deleted::Now),
            Err(FlyApiError::NotFound { .. }) => Ok(Deleted::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// One bodiless call that must carry the lease's nonce, retried within the usual budget.
    async fn under_lease(
        &self,
        kind: &'static str,
        method: Method,
        url: Url,
        lease: &Lease,
    ) -> Result<Bytes, FlyApiError> {
        self.execute_leased(
            kind,
            method,
            None,
            Some(&lease.nonce),
            self.inner.retry.max_elapsed,
            |left| (url.clone(), self.attempt_timeout(left)),
        )
        .await
    }
}
