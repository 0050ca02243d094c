//! Reproducible randomness: every random choice about a sample (its caption, its augmentation)
//! comes from a generator seeded by (run seed, epoch, sample index) and nothing else, so a
//! resumed run or another rank makes the same choices.

/// A seed for one sample in one epoch (`index = u64::MAX` for the epoch itself).
pub fn sample_seed(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut x = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    // splitmix64's finaliser: nearby inputs give unrelated seeds.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
