// Mixture of Experts blocks (cpp/src/blocks/moe.cpp). Included by lmblocks/blocks.h.
#pragma once
