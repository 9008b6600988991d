//! The environment variables that steer a context, read the same way
//! everywhere: a switch is `on`/`off`, `1`/`0`, `true`/`false` or
//! `yes`/`no` in any case, and anything else is an error naming the
//! variable (a typo must not silently mean "on").

use crate::error::{Error, Result};

/// Chooses the adapter: a case-insensitive substring of its name, or its
/// index in `lightning-wgpu info`.
pub const ADAPTER_ENV: &str = "LIGHTNING_ADAPTER";
/// Keeps wgpu's shader runtime bounds checks on (`1`) or lets the kernels
/// whose indices the host proves in range run without them (`0`, the default).
pub const CHECKED_ENV: &str = "LIGHTNING_CHECKED";
/// Forces the rows per block: 32 or 64.
pub const BLOCK_ENV: &str = "LIGHTNING_BLOCK";
/// Forces the reduction depth staged per step: 8 (the default), 16 or 32.
pub const DEPTH_ENV: &str = "LIGHTNING_DEPTH";
/// Reads f16 packed two to a u32 (`unpack2x16float`) even where the adapter
/// has SHADER_F16 (`1`).
pub const PACKED_F16_ENV: &str = "LIGHTNING_PACKED_F16";
/// The tensor-core (cooperative-matrix) path for f16 and bf16: `0` never,
/// `1` required (an error where the adapter lacks it); unset, it is used
/// where the adapter has it.
pub const COOP_ENV: &str = "LIGHTNING_COOP";

/// Every variable this crate reads, for documentation and `info`.
pub const ALL: [&str; 6] = [
    ADAPTER_ENV,
    CHECKED_ENV,
    BLOCK_ENV,
    DEPTH_ENV,
    PACKED_F16_ENV,
    COOP_ENV,
];

/// The value of `name`, `None` when unset or blank.
pub(crate) fn text(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Parses a switch's value; `None` for anything that is not one.
pub fn parse_switch(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Some(true),
        "0" | "off" | "false" | "no" => Some(false),
        _ => None,
    }
}

/// The switch `name`: `None` when unset, an error when set to something
/// that is not a switch.
pub(crate) fn switch(name: &'static str) -> Result<Option<bool>> {
    match text(name) {
        None => Ok(None),
        Some(v) => parse_switch(&v).map(Some).ok_or(Error::InvalidValue {
            arg: name,
            value: v,
            reason: "must be on/off, 1/0, true/false or yes/no",
        }),
    }
}

/// The number `name`: `None` when unset, an error naming `reason` when it
/// does not parse.
pub(crate) fn number(name: &'static str, reason: &'static str) -> Result<Option<u32>> {
    match text(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| Error::InvalidValue {
            arg: name,
            value: v,
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_switch;

    #[test]
    fn switches_read_in_any_case_and_refuse_the_rest() {
        for on in ["1", "on", "ON", "True", "yes", " Yes "] {
            assert_eq!(parse_switch(on), Some(true), "{on}");
        }
        for off in ["0", "off", "OFF", "false", "No"] {
            assert_eq!(parse_switch(off), Some(false), "{off}");
        }
        for bad in ["banana", "2", "", "o n"] {
            assert_eq!(parse_switch(bad), None, "{bad}");
        }
    }
}
