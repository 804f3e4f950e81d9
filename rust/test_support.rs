//! Inputs shared by the unit tests of several modules.

use crate::wire::{put_bytes, put_message};

/// An `ExportLogsServiceRequest` whose one log body is `levels` nested AnyValue arrays:
/// request(0) → ResourceLogs(1) → ScopeLogs(2) → LogRecord(3) → AnyValue(4), then 2 per level.
pub(crate) fn nested_log_body(levels: usize) -> Vec<u8> {
    let mut value = Vec::new();
    put_bytes(&mut value, 1, b"leaf");
    for _ in 0..levels {
        let mut array = Vec::new();
        put_bytes(&mut array, 1, &value);
        value.clear();
        put_bytes(&mut value, 5, &array);
    }
    let mut body = Vec::new();
    put_message(&mut body, 1, |rl| {
        put_message(rl, 2, |sl| put_message(sl, 2, |lr| put_bytes(lr, 5, &value)))
    });
    body
}
