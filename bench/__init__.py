"""medkeras benchmarks: each writes JSON under bench/results/ and a row in bench/RESULTS.md (not run by CI)."""
