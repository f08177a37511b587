//! Checks of config values shared by every config type; each error names the field
//! (its dotted path) and what was expected, with the value found.

use crate::{Error, Result};

/// A positive count.
pub fn positive(field: impl AsRef<str>, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::config(field.as_ref(), "must be positive, got 0"));
    }
    Ok(())
}

/// Every `(field, value)` a positive count.
pub fn all_positive<S: AsRef<str>>(fields: impl IntoIterator<Item = (S, usize)>) -> Result<()> {
    fields.into_iter().try_for_each(|(f, v)| positive(f, v))
}

/// A finite number above zero.
pub fn positive_real(field: impl AsRef<str>, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::config(
            field.as_ref(),
            format!("must be a finite number above 0, got {value}"),
        ));
    }
    Ok(())
}

/// A finite number at or above zero.
pub fn non_negative(field: impl AsRef<str>, value: f64) -> Result<()> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(Error::config(
            field.as_ref(),
            format!("must be a finite number >= 0, got {value}"),
        ));
    }
    Ok(())
}

/// A number in `[0, 1)` (a probability that cannot be 1: dropout, smoothing, shares).
pub fn unit_interval(field: impl AsRef<str>, value: f64) -> Result<()> {
    if !(0.0..1.0).contains(&value) {
        return Err(Error::config(
            field.as_ref(),
            format!("must be in [0, 1), got {value}"),
        ));
    }
    Ok(())
}

/// A number in `[0, 1]`.
pub fn closed_unit_interval(field: impl AsRef<str>, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::config(
            field.as_ref(),
            format!("must be in [0, 1], got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_names_the_field_and_the_value() {
        assert!(positive("a.b", 1).is_ok());
        let e = positive("a.b", 0).unwrap_err().to_string();
        assert!(e.contains("a.b") && e.contains("positive"), "{e}");
        let e = all_positive([("x", 3), ("y", 0)]).unwrap_err().to_string();
        assert!(e.contains("config y"), "{e}");
        assert!(positive_real("lr", 1e-3).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive_real("lr", bad).is_err(), "{bad}");
        }
        assert!(non_negative("wd", 0.0).is_ok() && non_negative("wd", f64::NAN).is_err());
        assert!(unit_interval("p", 0.0).is_ok() && unit_interval("p", 1.0).is_err());
        let e = unit_interval("p", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("[0, 1)") && e.contains("NaN"), "{e}");
        assert!(closed_unit_interval("u", 1.0).is_ok() && closed_unit_interval("u", 1.5).is_err());
    }
}
