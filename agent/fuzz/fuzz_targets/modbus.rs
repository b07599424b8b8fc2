#![no_main]
use libfuzzer_sys::fuzz_target;

// A Modbus RTU response frame against a read request: CRC, unit, function,
// byte count, exception; then register decoding of every type.
fuzz_target!(|data: &[u8]| tidegate_fuzz::modbus(data));
