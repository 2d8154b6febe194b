//! Fuzz target `checkpoint`: see `tes_fuzz_harness::checkpoint`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tes_fuzz_harness::checkpoint(data));
