"""Lexicon, symbol tables, HMM topology, n-gram LM and the decoding graph HCLG, in Kaldi's formats.

:mod:`.lexicon` (pronunciation sources), :mod:`.graphemes` (spelling rules for OOV words), :mod:`.topo`
(topologies), :mod:`.lm` (n-gram estimation, ARPA files, G), :mod:`.graph` (L, HCLG), :mod:`.lang_dir` (the lang directory).
"""
from ..fst import map_arcs, read_symbols, write_symbols
from .errors import LexiconError
from .graph import SILENCE, make_hclg, make_lexicon_fst
from .graphemes import grapheme_pronunciation
from .lang_dir import EPS, Lang, prepare_lang
from .lexicon import (FALLBACKS, Lexicon, LexiconReport, build_lexicon, load_cmudict, read_cmu_dict, read_lexicon,
                      strip_stress)
from .lm import ArpaLm, arpa_vocabulary, estimate_arpa, estimate_bigram_arpa, make_g, read_sentences
from .topo import make_topology

__all__ = ["map_arcs", "read_symbols", "write_symbols", "LexiconError", "SILENCE", "make_hclg", "make_lexicon_fst",
           "grapheme_pronunciation", "EPS", "Lang", "prepare_lang", "FALLBACKS", "Lexicon", "LexiconReport",
           "build_lexicon", "load_cmudict", "read_cmu_dict", "read_lexicon", "strip_stress", "ArpaLm", "arpa_vocabulary",
           "estimate_arpa", "estimate_bigram_arpa", "make_g", "read_sentences", "make_topology"]
