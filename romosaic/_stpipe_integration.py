"""Registration of romosaic's steps with stpipe's ``stpipe.steps`` entry point.

``strun ALIAS`` finds a class through this list. When another installed
package (e.g. romancal) registers the same alias, ``strun romosaic::roman_mos``
picks romosaic's.
"""

__all__ = ["get_steps"]


def get_steps():
    """Return ``(class name, alias, is_pipeline)`` for every romosaic step."""
    return [
        ("romosaic.pipeline.MosaicPipeline", "roman_mos", True),
        ("romosaic.steps.TweakRegStep", "tweakreg", False),
        ("romosaic.steps.FluxStep", "flux", False),
        ("romosaic.steps.SkyMatchStep", "skymatch", False),
        ("romosaic.steps.OutlierDetectionStep", "outlier_detection", False),
        ("romosaic.steps.ResampleStep", "resample", False),
        ("romosaic.steps.SourceCatalogStep", "source_catalog", False),
    ]
