//! Which of flyby's three roles this process plays: the binary is one, the apps and Machines
//! are several. Both targets know it: the server chooses its routes by it, and every page says
//! it (`<body data-role>`).

use serde::{Deserialize, Serialize};

/// What this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The public front app with the button.
    Launcher,
    /// A Machine launched for one visitor.
    Ephemeral,
    /// A Machine of the visitors' app that belongs to nobody and never ends: it answers the
    /// requests for Machines that are gone when no visitor's Machine is left to do it.
    Concierge,
}

/// A role name that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected `launcher`, `ephemeral` or `concierge`")]
pub struct UnknownRole;

impl Role {
    /// The name used in `FLYBY_ROLE` and in `<body data-role>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Launcher => "launcher",
            Role::Ephemeral => "ephemeral",
            Role::Concierge => "concierge",
        }
    }

    pub fn parse(name: &str) -> Result<Self, UnknownRole> {
        match name {
            "launcher" => Ok(Role::Launcher),
            "ephemeral" => Ok(Role::Ephemeral),
            "concierge" => Ok(Role::Concierge),
            _ => Err(UnknownRole),
        }
    }
}
