import sys

from triton_embeddings.export.cli import main

sys.exit(main())
