"""Training repositories written for the tests from the published descriptions of popular public ones
(not their code): each keeps its own class and attribute names, its own quirks and its own inference."""
