//! Endpoint secrets: generated here, shown once as `whsec_<base64>`, stored sealed with the
//! scheduler's key from Vault (AES-256-GCM, the endpoint's id as associated data, so a
//! sealed secret copied to another row does not open), and used to sign deliveries the
//! Standard Webhooks way.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hmac,
    rand::{SecureRandom as _, SystemRandom},
};
use uuid::Uuid;

/// Bytes of a signing key.
pub const KEY_LEN: usize = 32;
/// The prefix of a secret as shown to its owner.
pub const PREFIX: &str = "whsec_";

/// The key that seals endpoint secrets.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// From the base64 `key` field (32 bytes) of the Vault secret at `path`.
    pub fn from_base64(path: &str, key: Option<&str>) -> Result<Self, String> {
        let key = key.ok_or_else(|| format!("Vault secret {path} has no field \"key\""))?;
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|e| format!("Vault secret {path}: field \"key\" is not base64: {e}"))?;
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "Vault secret {path}: field \"key\" must hold {KEY_LEN} bytes, it holds {}",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "unusable key".to_owned())?;
        Ok(Self { key: LessSafeKey::new(key), rng: SystemRandom::new() })
    }

    /// A fresh random signing key.
    pub fn generate(&self) -> [u8; KEY_LEN] {
        let mut key = [0; KEY_LEN];
        self.rng.fill(&mut key).expect("the system's random source failed");
        key
    }

    /// `secret` sealed for `endpoint`: nonce, then ciphertext and tag.
    pub fn seal(&self, endpoint: Uuid, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system's random source failed");
        let mut sealed = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(endpoint.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM sealing of a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The secret [`Sealer::seal`] sealed for `endpoint`; `None` if it does not open (another
    /// key, another endpoint, or altered bytes).
    pub fn open(&self, endpoint: Uuid, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(endpoint.as_bytes()), &mut body).ok()?;
        Some(plain.to_vec())
    }
}

/// A key as its owner sees it: `whsec_<base64>`.
pub fn shown(key: &[u8]) -> String {
    format!("{PREFIX}{}", STANDARD.encode(key))
}

/// The `webhook-signature` header: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
/// for each key, space-separated (the current key first, then one still in its overlap).
pub fn signature(keys: &[Vec<u8>], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(message_id.len() + body.len() + 24);
    signed.extend_from_slice(message_id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    keys.iter()
        .map(|k| {
            format!("v1,{}", STANDARD.encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), &signed)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_base64("p", Some(&STANDARD.encode([7u8; 32]))).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_endpoint_and_key() {
        let s = sealer();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let key = s.generate();
        let sealed = s.seal(a, &key);
        assert!(!sealed.windows(KEY_LEN).any(|w| w == key), "the secret is stored in the clear");
        assert_eq!(s.open(a, &sealed).as_deref(), Some(&key[..]));
        assert_eq!(s.open(b, &sealed), None);
        let other = Sealer::from_base64("p", Some(&STANDARD.encode([8u8; 32]))).unwrap();
        assert_eq!(other.open(a, &sealed), None);
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(a, &altered), None);
        assert_ne!(s.seal(a, &key), sealed, "every seal has its own nonce");
    }

    #[test]
    fn the_vault_key_is_checked() {
        assert!(Sealer::from_base64("p", None).unwrap_err().contains("no field \"key\""));
        assert!(Sealer::from_base64("p", Some("%%")).unwrap_err().contains("not base64"));
        assert!(
            Sealer::from_base64("p", Some(&STANDARD.encode([1u8; 16]))).unwrap_err().contains("32 bytes")
        );
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (its reference libraries' test
        // vector): secret, id, timestamp, payload and the signature they give.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(shown(&[0u8; 3]), "whsec_AAAA");
    }

    // --- verify (docs/webhooks.md shows this function verbatim) ---
    fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
        let key = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap_or_default();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if timestamp.parse::<u64>().map_or(true, |ts| now.abs_diff(ts) > 300) {
            return false; // too old or from the future: a replay
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let signed = [format!("{id}.{timestamp}.").as_bytes(), body].concat();
        let mut candidates = signatures.split(' ').filter_map(|s| s.strip_prefix("v1,"));
        candidates
            .any(|s| STANDARD.decode(s).is_ok_and(|sig| ring::hmac::verify(&key, &signed, &sig).is_ok()))
    }
    // --- end verify ---

    #[test]
    fn the_documented_receiver_code_verifies_what_is_sent() {
        let (key, old) = (vec![3u8; 32], vec![4u8; 32]);
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"type":"job.succeeded"}"#;
        let header = signature(&[key.clone(), old.clone()], "msg_1", now, body);
        let ts = now.to_string();
        assert!(verify(&shown(&key), "msg_1", &ts, &header, body));
        assert!(verify(&shown(&old), "msg_1", &ts, &header, body), "the overlapping secret verifies too");
        assert!(!verify(&shown(&[5u8; 32]), "msg_1", &ts, &header, body));
        assert!(!verify(&shown(&key), "msg_2", &ts, &header, body));
        assert!(!verify(&shown(&key), "msg_1", &ts, &header, br#"{"type":"job.failed"}"#));
        let stale = (now - 600).to_string();
        let header = signature(std::slice::from_ref(&key), "msg_1", now - 600, body);
        assert!(!verify(&shown(&key), "msg_1", &stale, &header, body), "a replay ten minutes later");
    }

    #[test]
    fn both_keys_sign_during_an_overlap() {
        let sig = signature(&[vec![1; 32], vec![2; 32]], "msg_x", 1, b"{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }
}
