import sys

from triton_embeddings.compare.cli import main

sys.exit(main())
