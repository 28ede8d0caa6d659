//! Human durations in config: an integer followed by `s`, `m`, `h` or `d`.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value: u64 = number.parse().map_err(|_| {
            format!("{s:?} is not a duration like \"30s\", \"5m\", \"2h\" or \"5d\"")
        })?;
        let unit_secs = match unit {
            "ms" => return Ok(Duration(std::time::Duration::from_millis(value))),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration like \"30s\", \"5m\", \"2h\" or \"5d\""
                ));
            }
        };
        value
            .checked_mul(unit_secs)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            0 => write!(f, "{}ms", self.0.as_millis()),
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("30s".parse::<Duration>().unwrap().get().as_secs(), 30);
        assert_eq!("5m".parse::<Duration>().unwrap().get().as_secs(), 300);
        assert_eq!("2h".parse::<Duration>().unwrap().get().as_secs(), 7200);
        assert_eq!("5d".parse::<Duration>().unwrap().get().as_secs(), 432_000);
        assert_eq!("250ms".parse::<Duration>().unwrap().get().as_millis(), 250);
    }

    #[test]
    fn rejects_garbage() {
        assert!("".parse::<Duration>().is_err());
        assert!("5".parse::<Duration>().is_err());
        assert!("m5".parse::<Duration>().is_err());
        assert!("5 weeks".parse::<Duration>().is_err());
        assert!("99999999999999999999d".parse::<Duration>().is_err());
    }

    #[test]
    fn displays_in_largest_whole_unit() {
        assert_eq!(Duration::from_secs(3600).to_string(), "1h");
        assert_eq!(Duration::from_secs(90).to_string(), "90s");
    }
}
