//! Numeric codes carried by Omaha events: event types, event results and update_engine error codes.

pub mod error_code;
pub mod event;
pub mod platte;

/// Defines a `u32`-coded enum with named variants, a description per variant and an
/// `Other(u32)` variant that preserves unknown numbers, with lossless `from_u32`/`to_u32`.
macro_rules! numbered_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $num:literal => $desc:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A number without a name here, preserved as received.
            Other(u32),
        }

        impl $name {
            /// Every named variant, in numeric order.
            pub const NAMED: &'static [$name] = &[ $( $name::$variant, )* ];

            /// Maps a wire number to its variant; unknown numbers become `Other`.
            pub const fn from_u32(n: u32) -> Self {
                match n {
                    $( $num => $name::$variant, )*
                    other => $name::Other(other),
                }
            }

            /// The wire number of this variant.
            pub const fn to_u32(self) -> u32 {
                match self {
                    $( $name::$variant => $num, )*
                    $name::Other(n) => n,
                }
            }

            /// A short human description, or `None` for `Other`.
            pub const fn description(self) -> Option<&'static str> {
                match self {
                    $( $name::$variant => Some($desc), )*
                    $name::Other(_) => None,
                }
            }
        }

        impl From<u32> for $name {
            fn from(n: u32) -> Self {
                $name::from_u32(n)
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v.to_u32()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.description() {
                    Some(d) => f.write_str(d),
                    None => write!(f, "unknown ({})", self.to_u32()),
                }
            }
        }
    };
}

pub(crate) use numbered_enum;
