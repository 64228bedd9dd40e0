"""`python -m nas_zoo.demo`: the main job (a DNA search end to end on the embedded data); it lives beside the
search code in `nas_zoo.search.demo`, imported only when this module runs."""
import sys

if __name__ == "__main__":
    from nas_zoo.search.demo import main
    sys.exit(main())
