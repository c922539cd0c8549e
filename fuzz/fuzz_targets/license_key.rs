//! Any typed text: a key is either refused or canonical (8 groups of 4 from
//! the alphabet) and parses back to itself.
#![no_main]

use billing_core::domain::LicenseKey;
use libfuzzer_sys::fuzz_target;

const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fuzz_target!(|input: &str| {
    if let Some(key) = LicenseKey::parse(input) {
        let groups: Vec<&str> = key.expose().split('-').collect();
        assert_eq!(groups.len(), 8);
        assert!(groups.iter().all(|g| g.len() == 4 && g.chars().all(|c| ALPHABET.contains(c))));
        assert_eq!(LicenseKey::parse(key.expose()).as_ref(), Some(&key));
    }
});
