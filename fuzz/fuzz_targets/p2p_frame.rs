#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmachine_fuzz_targets::p2p_frame(data));
