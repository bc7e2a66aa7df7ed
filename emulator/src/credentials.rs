//! Credentials that rotate, as EC2's instance metadata service (IMDSv2) and the container
//! credentials endpoint (ECS task roles, EKS Pod Identity) hand them out: a new set every
//! `every_ms`, each valid for `lifetime_ms` from its issue (whole seconds, as `Expiration`
//! says). A request signed with a set is accepted only while that set is valid.
//!
//! Sets are derived from their number and a per-process seed, so nothing is stored: set `n` is
//! issued at `start + n·every`. Access key IDs are `ASIAEMU` and the set's number.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::sigv4_verify::{format_amz_date, Credentials};

/// The role instance metadata names.
pub const ROLE: &str = "tollgate-emulator-role";
/// Every rotating access key ID starts with this.
pub const KEY_PREFIX: &str = "ASIAEMU";

#[derive(Clone, Debug)]
pub struct Rotation {
    pub every_ms: u64,
    pub lifetime_ms: u64,
    /// When set 0 was issued (a whole second).
    pub start_ms: u64,
    seed: [u8; 32],
}

/// One set with its validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub generation: u64,
    pub credentials: Credentials,
    pub issued_ms: u64,
    pub expires_ms: u64,
}

impl Rotation {
    /// Starts now (rounded down to a second), with a seed of this process's own.
    pub fn new(every_ms: u64, lifetime_ms: u64) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let now = crate::ledger::now_ms();
        let mut seed = [0u8; 32];
        for (i, chunk) in seed.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&RandomState::new().hash_one((now, i)).to_le_bytes());
        }
        Self::with_seed(every_ms, lifetime_ms, now / 1000 * 1000, seed)
    }

    pub fn with_seed(every_ms: u64, lifetime_ms: u64, start_ms: u64, seed: [u8; 32]) -> Self {
        Self {
            every_ms: every_ms.max(1),
            lifetime_ms,
            start_ms,
            seed,
        }
    }

    fn mac(&self, what: &str, n: u64) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.seed)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(what.as_bytes());
        mac.update(&n.to_le_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The newest set at `now_ms`.
    pub fn generation_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.start_ms) / self.every_ms
    }

    pub fn set(&self, n: u64) -> Set {
        let issued_ms = self.start_ms + n * self.every_ms;
        Set {
            generation: n,
            credentials: Credentials {
                access_key_id: format!("{KEY_PREFIX}{n:013}"),
                secret_access_key: self.mac("secret", n)[..40].to_string(),
                session_token: Some(format!("IQoJemu{}", self.mac("token", n))),
            },
            issued_ms,
            expires_ms: (issued_ms + self.lifetime_ms) / 1000 * 1000,
        }
    }

    /// The set an access key ID names, if it has been issued and has not expired at `now_ms`.
    pub fn valid(&self, access_key_id: &str, now_ms: u64) -> Option<Set> {
        let n: u64 = access_key_id.strip_prefix(KEY_PREFIX)?.parse().ok()?;
        let set = self.set(n);
        (set.credentials.access_key_id == access_key_id
            && n <= self.generation_at(now_ms)
            && now_ms < set.expires_ms)
            .then_some(set)
    }

    /// The newest set as the endpoints answer it (JSON).
    pub fn document(&self, now_ms: u64, instance_metadata: bool) -> String {
        let set = self.set(self.generation_at(now_ms));
        let c = &set.credentials;
        let mut doc = serde_json::json!({
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.session_token,
            "Expiration": rfc3339(set.expires_ms),
        });
        if instance_metadata {
            doc["Code"] = "Success".into();
            doc["LastUpdated"] = rfc3339(set.issued_ms / 1000 * 1000).into();
            doc["Type"] = "AWS-HMAC".into();
        } else {
            doc["RoleArn"] = format!("arn:aws:iam::123456789012:role/{ROLE}").into();
        }
        doc.to_string()
    }
}

/// `2026-11-29T15:35:00Z`.
pub fn rfc3339(ms: u64) -> String {
    let d = format_amz_date(UNIX_EPOCH + Duration::from_millis(ms));
    // YYYYMMDDTHHMMSSZ
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    )
}

/// Milliseconds since the epoch of `t`.
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_rotate_and_expire() {
        let r = Rotation::with_seed(3_000, 9_000, 1_000_000, [7; 32]);
        assert_eq!(r.generation_at(1_000_000), 0);
        assert_eq!(r.generation_at(1_005_999), 1);
        let s1 = r.set(1);
        assert_eq!(s1.credentials.access_key_id, "ASIAEMU0000000000001");
        assert_eq!((s1.issued_ms, s1.expires_ms), (1_003_000, 1_012_000));
        assert_ne!(
            s1.credentials.secret_access_key,
            r.set(2).credentials.secret_access_key
        );
        // Not before it is issued, not once it has expired.
        assert_eq!(r.valid("ASIAEMU0000000000001", 1_002_999), None);
        assert_eq!(r.valid("ASIAEMU0000000000001", 1_003_000), Some(s1.clone()));
        assert_eq!(r.valid("ASIAEMU0000000000001", 1_011_999), Some(s1));
        assert_eq!(r.valid("ASIAEMU0000000000001", 1_012_000), None);
        assert_eq!(r.valid("ASIAEMU1", 1_003_000), None);
        assert_eq!(r.valid("AKIDOTHER", 1_003_000), None);
        // Expiration is a whole second.
        let r = Rotation::with_seed(1_500, 4_700, 1_000_000, [7; 32]);
        assert_eq!(r.set(1).expires_ms, 1_006_000);
    }

    #[test]
    fn documents_are_what_the_endpoints_answer() {
        let r = Rotation::with_seed(3_000, 9_000, 1_764_430_000_000, [7; 32]);
        let doc: serde_json::Value =
            serde_json::from_str(&r.document(1_764_430_004_000, true)).unwrap();
        assert_eq!(doc["AccessKeyId"], "ASIAEMU0000000000001");
        assert_eq!(doc["Expiration"], "2025-11-29T15:26:52Z");
        assert_eq!(doc["Code"], "Success");
        let doc: serde_json::Value =
            serde_json::from_str(&r.document(1_764_430_004_000, false)).unwrap();
        assert!(doc.get("Code").is_none() && doc["RoleArn"].is_string());
    }
}
