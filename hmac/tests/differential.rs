//! Differential test: for pseudo-random keys and messages, the portable backend, the
//! SHA-NI backend (when this CPU has it), the one-shot functions and streaming with
//! random split points must all agree, for SHA-256 and for HMAC-SHA256. HMAC is also
//! checked against its RFC 2104 definition built from one-shot SHA-256.

use qvm_remote_hmac::{
    hmac_sha256, sha256, sha256_with, shani_available, Backend, HmacSha256, Sha256,
};

/// SplitMix64: tiny, seeded, and good enough to spread lengths and bytes around.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Cuts `len` bytes into random consecutive pieces, returned as end offsets.
    fn cuts(&mut self, len: usize) -> Vec<usize> {
        let mut cuts = Vec::new();
        let mut at = 0;
        while at < len {
            // Mostly small pieces, sometimes large ones, so partial-block buffering and
            // the bulk path both get exercised.
            let piece = if self.below(4) == 0 {
                self.below(200) + 1
            } else {
                self.below(70) + 1
            };
            at = (at + piece).min(len);
            cuts.push(at);
        }
        cuts
    }
}

fn backends() -> Vec<Backend> {
    let mut list = vec![Backend::Portable];
    if shani_available() {
        list.push(Backend::ShaNi);
    }
    list
}

/// RFC 2104 section 2, written out with one-shot SHA-256 only.
fn hmac_by_definition(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha256(&[&ipad[..], msg].concat());
    sha256(&[&opad[..], &inner[..]].concat())
}

/// All the ways of hashing and MACing `msg` must agree.
fn check(rng: &mut SplitMix64, key: &[u8], msg: &[u8]) {
    let ctx = format!("key {} bytes, msg {} bytes", key.len(), msg.len());
    let digest = sha256_with(Backend::Portable, msg);
    let tag = hmac_by_definition(key, msg);
    assert_eq!(sha256(msg), digest, "{ctx}: one-shot sha256");
    assert_eq!(hmac_sha256(key, msg), tag, "{ctx}: one-shot hmac");

    for backend in backends() {
        assert_eq!(
            sha256_with(backend, msg),
            digest,
            "{ctx}: {backend:?} sha256"
        );

        let cuts = rng.cuts(msg.len());
        let mut hasher = Sha256::with_backend(backend);
        let mut mac = HmacSha256::with_backend(key, backend);
        let mut start = 0;
        for &end in &cuts {
            hasher.update(&msg[start..end]);
            mac.update(&msg[start..end]);
            start = end;
        }
        assert_eq!(
            hasher.finalize(),
            digest,
            "{ctx}: {backend:?} streaming {cuts:?}"
        );
        assert_eq!(
            mac.finalize(),
            tag,
            "{ctx}: {backend:?} hmac streaming {cuts:?}"
        );
    }
}

#[test]
fn backends_and_apis_agree_on_random_inputs() {
    let mut rng = SplitMix64(0x7176_6d2d_7265_6d6f);
    for _ in 0..1000 {
        let key_len = rng.below(300);
        let key = rng.bytes(key_len);
        let msg_len = rng.below(300);
        let msg = rng.bytes(msg_len);
        check(&mut rng, &key, &msg);
    }
}

#[test]
fn backends_and_apis_agree_on_longer_random_inputs() {
    // Fewer, longer messages: many whole blocks per update call.
    let mut rng = SplitMix64(0x6c6f_6e67_6572_2121);
    for _ in 0..50 {
        let key_len = rng.below(300);
        let key = rng.bytes(key_len);
        let msg_len = rng.below(20_000);
        let msg = rng.bytes(msg_len);
        check(&mut rng, &key, &msg);
    }
}

#[test]
fn every_length_around_the_padding_boundaries() {
    // Lengths 0..=200 cover 55/56 (length field just fits / spills into another
    // block) and 63/64/65 (block boundary) several times over.
    let mut rng = SplitMix64(42);
    let data = rng.bytes(200);
    for len in 0..=data.len() {
        check(&mut rng, &data[..len % 67], &data[..len]);
    }
}
