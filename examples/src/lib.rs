//! Examples live in rust/, python/ and node/.
