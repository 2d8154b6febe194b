//! Fuzz target `envelope`: see `tes_fuzz_harness::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tes_fuzz_harness::envelope(data));
