//! `backup` (being written).
