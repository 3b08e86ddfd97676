"""Stand-in for reForge's `modules_forge` package (its presence and the files an extension
uses; host detection, forge-contract.md §7)."""
