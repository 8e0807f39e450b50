"""The answers to the query RPCs: each module reads its rollups and assembles one reply."""
