"""Data efficiency (paper A): measured learning curves and their AUC, CoS-Low, predicted curves and calibration."""
