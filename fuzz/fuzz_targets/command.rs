//! Fuzz target `command`: see `tes_fuzz_harness::command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tes_fuzz_harness::command(data));
