"""The foreign suite: small training programs written apart from the doctor, in other
frameworks' metric vocabularies, with real faults and noisy healthy runs (issue #23)."""
