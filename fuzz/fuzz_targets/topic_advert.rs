#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netmachine_fuzz_targets::topic_advert(data));
