//! The pages' shared helpers, rule by rule.

use super::fixed;

#[test]
fn fixed_writes_what_float_formatting_would() {
    for (value, places, expected) in [
        (0.0, 1, "0.0"),
        (12.345, 1, "12.3"),
        (12.35, 2, "12.35"),
        (0.05, 1, "0.1"),
        (9.96, 1, "10.0"),
        (1.0, 2, "1.00"),
        (0.007, 2, "0.01"),
        (3.4, 0, "3"),
        (-0.24, 1, "-0.2"),
        (-0.04, 1, "0.0"),
        (359.9, 1, "359.9"),
        (1234.5678, 3, "1234.568"),
    ] {
        assert_eq!(
            fixed(value, places),
            expected,
            "{value} with {places} places"
        );
    }
}
