#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate::config::Framing;

// Half the inputs go on the wire as they are (COBS, CRC and postcard all
// fuzzed); the other half are postcard bodies sealed with a correct CRC and
// COBS, so the postcard decoder sees inputs a random CRC would never pass.
fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&mode, body)) if mode & 1 == 1 => {
            let frame = firmware_sim::frame::seal(body);
            tidegate_fuzz::serial(Framing::Binary, &frame);
        }
        _ => tidegate_fuzz::serial(Framing::Binary, data),
    }
});
