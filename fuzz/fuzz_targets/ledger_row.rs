//! Fuzz target `ledger_row`: see `tes_fuzz_harness::ledger_row`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tes_fuzz_harness::ledger_row(data));
