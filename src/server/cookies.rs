//! The two cookies flyby sets, built in one place so their attributes cannot drift apart:
//! HttpOnly (no script reads them), SameSite=Lax (sent on the top-level navigation of the
//! hand-over, not on cross-site subrequests), Secure whenever the visitor came over https,
//! and a lifetime in seconds that matches what they pin.

use super::affinity::{owner_cookie_value, LAUNCH_COOKIE, OWNER_COOKIE};
use crate::fly::MachineId;
use cookie::{Cookie, SameSite};
use std::time::Duration;

fn build(name: &'static str, value: String, max_age: Duration, secure: bool) -> String {
    let max_age = cookie::time::Duration::seconds(max_age.as_secs().min(i64::MAX as u64) as i64);
    Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(max_age)
        .build()
        .to_string()
}

/// The owner cookie of the ephemeral app, for as long as the Machine lives.
pub fn owner(machine: MachineId, secret: &str, lifetime: Duration, secure: bool) -> String {
    build(
        OWNER_COOKIE,
        owner_cookie_value(machine, secret),
        lifetime,
        secure,
    )
}

/// The launch pin of the launcher app, for as long as a launch may run.
pub fn launch_pin(launcher: MachineId, lifetime: Duration, secure: bool) -> String {
    build(LAUNCH_COOKIE, launcher.to_string(), lifetime, secure)
}

/// A `Set-Cookie` value that removes the cookie `name`.
pub fn clear(name: &'static str) -> String {
    build(name, String::new(), Duration::ZERO, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_cookie_is_http_only_lax_and_lives_seconds() {
        let id = MachineId::parse("0123456789abcd").unwrap();
        let c = owner(id, "s3cret", Duration::from_secs(120), false);
        assert_eq!(
            c,
            "flyby_owner=0123456789abcd.s3cret; HttpOnly; SameSite=Lax; Path=/; Max-Age=120"
        );
        let secure = owner(id, "s3cret", Duration::from_secs(120), true);
        assert!(secure.contains("; Secure"), "{secure}");
    }

    #[test]
    fn clearing_expires_at_once() {
        assert_eq!(
            clear(LAUNCH_COOKIE),
            "flyby_launch=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
